//! Bearer tokens: 32 random bytes shown once; only their SHA-256 is stored. Failed
//! attempts are rate limited per client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use certkeeper_store::Principal;

use crate::AppState;
use crate::error::ApiError;

/// A new random token with a readable prefix (`ck_admin_`, `ck_agent_`, `ck_enroll_`).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not recoverable; there is no safe fallback.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the database keeps of a token.
pub fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.trim().as_bytes()))
}

/// Counts failed authentications per client address in a sliding minute.
#[derive(Debug)]
pub struct AuthLimiter {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    pub fn new(max_failures_per_minute: u32) -> Self {
        AuthLimiter {
            max_failures: max_failures_per_minute,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(start, n)| start.elapsed() < self.window && *n >= self.max_failures)
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| start.elapsed() < self.window);
            if map.len() > 100_000 {
                // Under a flood from very many addresses, forget rather than grow.
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// The bearer token of a request, if it has one.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The client's address; IPv6 clients are counted by their /64 (one host's share).
fn client_ip(parts: &Parts) -> IpAddr {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    match ip {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::from(seg)
        }
        v4 => v4,
    }
}

/// Check the rate limit before looking at a presented secret.
fn check_limit(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    if state.limiter.blocked(client_ip(parts)) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            "too many failed authentications from this address; wait a minute",
        ));
    }
    Ok(())
}

/// Note a failed authentication from this request's address.
fn note_failure(state: &AppState, parts: &Parts) {
    let ip = client_ip(parts);
    tracing::warn!(client = %ip, path = %parts.uri.path(), "authentication failed");
    state.limiter.record_failure(ip);
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.0 {
            Principal::Admin => Ok(()),
            Principal::Agent { .. } => Err(ApiError::forbidden()),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// A valid token always works, so failures from a shared address (NAT, a proxy)
    /// cannot lock out the clients that hold real tokens; failed attempts beyond the
    /// limit get 429 instead of 401. Tokens are 256-bit random (or ≥ 24 characters when
    /// preset), so the limit is about load and noise, not guessability.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(token) = bearer(parts)
            && let Some(p) = state.store.principal(&token_hash(token)).await?
        {
            return Ok(Caller(p));
        }
        check_limit(state, parts)?;
        note_failure(state, parts);
        Err(ApiError::unauthorized())
    }
}

/// The enrollment token of an enrollment request (checked by the store, which also
/// consumes one use).
#[derive(Debug)]
pub struct EnrollmentBearer {
    pub token: String,
    ip: IpAddr,
}

impl EnrollmentBearer {
    /// The store refused the token: count it as a failed authentication.
    pub fn refused(&self, state: &AppState) {
        tracing::warn!(client = %self.ip, "enrollment refused");
        state.limiter.record_failure(self.ip);
    }
}

impl FromRequestParts<AppState> for EnrollmentBearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_limit(state, parts)?;
        match bearer(parts) {
            Some(t) => Ok(EnrollmentBearer {
                token: t.to_string(),
                ip: client_ip(parts),
            }),
            None => {
                note_failure(state, parts);
                Err(ApiError::unauthorized())
            }
        }
    }
}

/// An authenticated administrator.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_admin()?;
        Ok(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token("ck_admin_");
        let b = new_token("ck_admin_");
        assert_ne!(a, b);
        assert!(a.starts_with("ck_admin_") && a.len() == 9 + 43);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn limiter_blocks_after_the_limit() {
        let l = AuthLimiter::new(3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            assert!(!l.blocked(ip));
            l.record_failure(ip);
        }
        assert!(l.blocked(ip));
        assert!(!l.blocked(IpAddr::from([10, 0, 0, 2])));
    }
}
