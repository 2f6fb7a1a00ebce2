//! Revocation status of a presented leaf: the OCSP response the server stapled,
//! the OCSP responder named in the leaf's AIA, and the CRL at its distribution
//! point. Each answer is checked against the leaf's issuer (the next certificate
//! of the presented chain): an OCSP response must be signed by the issuer or a
//! responder it delegated to, a CRL by the issuer. Fetches go through
//! [`crate::fetch`], bounded.

use certkeeper_core::findings::{
    RevocationCheck, RevocationFacts, RevocationSource, RevocationStatus,
};
use openssl::hash::MessageDigest;
use openssl::ocsp::{
    OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus,
    OcspRevokedStatus,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{CrlStatus, X509, X509Crl, X509Ref};
use time::OffsetDateTime;

use crate::fetch::{FetchPolicy, Method, fetch};

/// Clock skew allowed on thisUpdate/nextUpdate.
const SKEW_SECS: u32 = 300;

/// What the TLS scan saw of stapling.
#[derive(Debug, Clone, Copy)]
pub struct Stapling<'a> {
    /// `None`: not tested (no TLS ≤ 1.2 hello accepted).
    pub offered: Option<bool>,
    pub response: Option<&'a [u8]>,
}

/// Revocation facts of `chain` (leaf first, as presented). `online`: the fetch
/// limits for OCSP and CRL, or `None` to check the staple only.
pub async fn check_revocation(
    chain: &[Vec<u8>],
    stapling: Stapling<'_>,
    online: Option<&FetchPolicy>,
    now: OffsetDateTime,
) -> RevocationFacts {
    let mut facts = RevocationFacts {
        stapling: stapling.offered,
        ..RevocationFacts::default()
    };
    let Some(leaf) = chain.first().and_then(|d| X509::from_der(d).ok()) else {
        facts.not_tested = Some("no decodable leaf certificate".into());
        return facts;
    };
    let ocsp_urls = ocsp_urls(&leaf);
    facts.leaf_has_ocsp = !ocsp_urls.is_empty();
    let Some(issuer) = issuer_of(&leaf, chain) else {
        facts.not_tested =
            Some("the issuer of the leaf was not sent, so answers cannot be verified".into());
        return facts;
    };
    if let Some(der) = stapling.response {
        facts.checks.push(RevocationCheck {
            source: RevocationSource::Stapled,
            url: None,
            status: ocsp_status(der, &leaf, &issuer, now),
        });
    }
    let Some(policy) = online else {
        facts.not_tested = Some("online checks are turned off".into());
        return facts;
    };
    // One of each is enough: the first responder and the first distribution point,
    // asked at the same time.
    let crl_url = crl_urls(&leaf).into_iter().next();
    let ocsp = async {
        match ocsp_urls.first() {
            Some(url) => Some(RevocationCheck {
                source: RevocationSource::Ocsp,
                url: Some(url.clone()),
                status: online_ocsp(url, &leaf, &issuer, policy, now).await,
            }),
            None => None,
        }
    };
    let crl = async {
        let url = crl_url?;
        let status = match fetch(&url, Method::Get, policy).await {
            Ok(body) => crl_status(&body, &leaf, &issuer, now),
            Err(e) => RevocationStatus::Unreachable {
                reason: e.to_string(),
            },
        };
        Some(RevocationCheck {
            source: RevocationSource::Crl,
            url: Some(url),
            status,
        })
    };
    let (ocsp, crl) = tokio::join!(ocsp, crl);
    facts.checks.extend(ocsp);
    facts.checks.extend(crl);
    if facts.checks.is_empty() && !facts.leaf_has_ocsp {
        facts.not_tested = Some("the leaf names no OCSP responder and no CRL".into());
    }
    facts
}

/// The presented certificate that issued `leaf` (its subject is the leaf's issuer
/// and its key verifies the leaf's signature).
fn issuer_of(leaf: &X509Ref, chain: &[Vec<u8>]) -> Option<X509> {
    chain[1..]
        .iter()
        .filter_map(|d| X509::from_der(d).ok())
        .find(|c| {
            c.subject_name().try_cmp(leaf.issuer_name()).ok() == Some(std::cmp::Ordering::Equal)
                && c.public_key()
                    .ok()
                    .and_then(|k| leaf.verify(&k).ok())
                    .unwrap_or(false)
        })
}

fn ocsp_urls(leaf: &X509Ref) -> Vec<String> {
    leaf.ocsp_responders()
        .map(|s| s.iter().map(|u| u.to_string()).collect())
        .unwrap_or_default()
}

fn crl_urls(leaf: &X509Ref) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(points) = leaf.crl_distribution_points() {
        for p in &points {
            if let Some(names) = p.distpoint().and_then(|d| d.fullname()) {
                out.extend(names.iter().filter_map(|n| n.uri()).map(str::to_string));
            }
        }
    }
    out
}

async fn online_ocsp(
    url: &str,
    leaf: &X509Ref,
    issuer: &X509Ref,
    policy: &FetchPolicy,
    now: OffsetDateTime,
) -> RevocationStatus {
    let unreachable = |reason: String| RevocationStatus::Unreachable { reason };
    let request = OcspCertId::from_cert(MessageDigest::sha1(), leaf, issuer).and_then(|id| {
        let mut req = OcspRequest::new()?;
        req.add_id(id)?;
        req.to_der()
    });
    let body = match request {
        Ok(b) => b,
        Err(e) => return unreachable(format!("OCSP request not made: {e}")),
    };
    let post = Method::Post {
        content_type: "application/ocsp-request",
        body: &body,
    };
    match fetch(url, post, policy).await {
        Ok(der) => ocsp_status(&der, leaf, issuer, now),
        Err(e) => unreachable(e.to_string()),
    }
}

/// Judge one DER OCSP response about `leaf`.
pub fn ocsp_status(
    der: &[u8],
    leaf: &X509Ref,
    issuer: &X509Ref,
    now: OffsetDateTime,
) -> RevocationStatus {
    let unreachable = |reason: &str| RevocationStatus::Unreachable {
        reason: reason.to_string(),
    };
    let Ok(resp) = OcspResponse::from_der(der) else {
        return unreachable("the answer is not an OCSP response");
    };
    let status = resp.status();
    if status != OcspResponseStatus::SUCCESSFUL {
        let name = match status {
            OcspResponseStatus::MALFORMED_REQUEST => "malformedRequest",
            OcspResponseStatus::INTERNAL_ERROR => "internalError",
            OcspResponseStatus::TRY_LATER => "tryLater",
            OcspResponseStatus::SIG_REQUIRED => "sigRequired",
            OcspResponseStatus::UNAUTHORIZED => "unauthorized",
            _ => "an unknown error status",
        };
        return RevocationStatus::Unknown {
            reason: format!("the responder answered {name}"),
        };
    }
    let Ok(basic) = resp.basic() else {
        return unreachable("the OCSP response has no basic response");
    };
    if let Err(e) = verify_signer(&basic, issuer) {
        return RevocationStatus::Unreachable {
            reason: format!("the OCSP response is not signed by the issuer or its responder: {e}"),
        };
    }
    let Ok(id) = OcspCertId::from_cert(MessageDigest::sha1(), leaf, issuer) else {
        return unreachable("no certificate id for the leaf");
    };
    let Some(st) = basic.find_status(&id) else {
        return RevocationStatus::Unknown {
            reason: "the response does not cover this certificate".into(),
        };
    };
    if st.status == OcspCertStatus::REVOKED {
        return RevocationStatus::Revoked {
            revoked_at: st.revocation_time.and_then(|t| asn1_time(&t.to_string())),
            reason: reason_name(st.reason.as_raw()),
        };
    }
    let this_update = asn1_time(&st.this_update.to_string());
    let next_update = st.next_update().and_then(|t| asn1_time(&t.to_string()));
    let skew = time::Duration::seconds(SKEW_SECS.into());
    if this_update.is_some_and(|t| t > now + skew) {
        return RevocationStatus::Unknown {
            reason: "the response's thisUpdate is in the future".into(),
        };
    }
    if let Some(n) = next_update.filter(|n| *n + skew < now) {
        return RevocationStatus::Unknown {
            reason: format!("the response expired at {}", rfc3339(n)),
        };
    }
    if st.status == OcspCertStatus::GOOD {
        RevocationStatus::Good
    } else {
        RevocationStatus::Unknown {
            reason: "the responder does not know the certificate".into(),
        }
    }
}

/// OCSP_basic_verify with the issuer as the only trust anchor: the response is
/// signed by the issuer itself, or by a certificate the issuer gave OCSPSigning.
fn verify_signer(
    basic: &openssl::ocsp::OcspBasicResponseRef,
    issuer: &X509Ref,
) -> Result<(), openssl::error::ErrorStack> {
    let mut store = X509StoreBuilder::new()?;
    store.add_cert(issuer.to_owned())?;
    store.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
    let store = store.build();
    let mut certs = Stack::new()?;
    certs.push(issuer.to_owned())?;
    basic.verify(&certs, &store, OcspFlag::empty())
}

/// Judge one CRL (DER or PEM) about `leaf`.
pub fn crl_status(
    body: &[u8],
    leaf: &X509Ref,
    issuer: &X509Ref,
    now: OffsetDateTime,
) -> RevocationStatus {
    let crl = match X509Crl::from_der(body).or_else(|_| X509Crl::from_pem(body)) {
        Ok(c) => c,
        Err(_) => {
            return RevocationStatus::Unreachable {
                reason: "the answer is not a CRL".into(),
            };
        }
    };
    let issued_by =
        crl.issuer_name().try_cmp(issuer.subject_name()).ok() == Some(std::cmp::Ordering::Equal);
    let signed = issuer
        .public_key()
        .ok()
        .and_then(|k| crl.verify(&k).ok())
        .unwrap_or(false);
    if !issued_by || !signed {
        return RevocationStatus::Unreachable {
            reason: "the CRL is not signed by the leaf's issuer".into(),
        };
    }
    match crl.get_by_serial(leaf.serial_number()) {
        CrlStatus::Revoked(entry) => {
            let reason = entry
                .extension::<openssl::x509::ReasonCode>()
                .ok()
                .flatten()
                .and_then(|(_, code)| code.get_i64().ok())
                .and_then(|c| reason_name(c as i32));
            return RevocationStatus::Revoked {
                revoked_at: asn1_time(&entry.revocation_date().to_string()),
                reason,
            };
        }
        CrlStatus::RemoveFromCrl(_) | CrlStatus::NotRevoked => {}
    }
    let next = crl.next_update().and_then(|t| asn1_time(&t.to_string()));
    match next {
        Some(n) if n + time::Duration::seconds(SKEW_SECS.into()) < now => {
            RevocationStatus::Unknown {
                reason: format!("the CRL expired at {}", rfc3339(n)),
            }
        }
        _ => RevocationStatus::Good,
    }
}

/// RFC 5280 CRLReason names.
fn reason_name(code: i32) -> Option<String> {
    let name = match code {
        c if c == OcspRevokedStatus::NO_STATUS.as_raw() => return None,
        0 => "unspecified",
        1 => "keyCompromise",
        2 => "cACompromise",
        3 => "affiliationChanged",
        4 => "superseded",
        5 => "cessationOfOperation",
        6 => "certificateHold",
        8 => "removeFromCRL",
        9 => "privilegeWithdrawn",
        10 => "aACompromise",
        _ => return Some(format!("reason {code}")),
    };
    Some(name.to_string())
}

/// OpenSSL's printed time (`Dec  2 01:00:00 2026 GMT`) as a date.
fn asn1_time(text: &str) -> Option<OffsetDateTime> {
    let fmt = time::macros::format_description!(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let fmt_one = time::macros::format_description!(
        "[month repr:short] [day padding:none] [hour]:[minute]:[second] [year] GMT"
    );
    time::PrimitiveDateTime::parse(text, fmt)
        .or_else(|_| time::PrimitiveDateTime::parse(&squeezed, fmt_one))
        .ok()
        .map(|t| t.assume_utc())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_times_and_reasons_read() {
        assert_eq!(
            asn1_time("Dec  2 01:00:09 2026 GMT"),
            Some(time::macros::datetime!(2026-12-02 01:00:09 UTC))
        );
        assert_eq!(
            asn1_time("Nov 30 23:59:59 2026 GMT"),
            Some(time::macros::datetime!(2026-11-30 23:59:59 UTC))
        );
        assert_eq!(asn1_time("garbage"), None);
        assert_eq!(reason_name(1).as_deref(), Some("keyCompromise"));
        assert_eq!(reason_name(-1), None);
    }
}
