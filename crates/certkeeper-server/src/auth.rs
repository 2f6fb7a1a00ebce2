//! Bearer tokens: 32 random bytes shown once; only their SHA-256 is stored. Failed
//! attempts are rate limited per client address. Every route declares what it needs
//! (`api::ROUTE_NEEDS`); [`authorize`] checks it before the handler runs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certkeeper_core::access::{Permission, Permissions};
use certkeeper_store::Principal;
use time::OffsetDateTime;

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

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nobody needs to authenticate (`/healthz`).
    Public,
    /// An enrollment token, checked by the handler.
    Enrollment,
    /// An agent's credential, checked by the handler.
    Agent,
    /// Any valid token.
    Authenticated,
    /// A token holding this permission (`admin` implies every one).
    Permission(Permission),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// What the caller may do: everything (the bootstrap administrator), nothing
    /// (agents, which only enroll and report), or its token's permissions.
    pub fn permissions(&self) -> Permissions {
        match &self.0 {
            Principal::Admin => Permissions::admin(),
            Principal::Agent { .. } => Permissions::none(),
            Principal::Token(t) => t.permissions.clone(),
        }
    }

    pub fn allows(&self, p: Permission) -> bool {
        self.permissions().allows(p)
    }

    /// 403 `missing_permission` unless the caller holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.allows(p) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing_permission",
            format!("this token lacks the {p} permission"),
        )
        .with("permission", p.as_str().into()))
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require(Permission::Admin)
    }

    /// The team the caller acts for; `None`: server-wide.
    pub fn team(&self) -> Option<&str> {
        match &self.0 {
            Principal::Token(t) => t.team.as_deref(),
            _ => None,
        }
    }

    /// How the caller is named in the audit log.
    pub fn actor(&self) -> String {
        match &self.0 {
            Principal::Admin => "admin".into(),
            Principal::Agent { id } => format!("agent:{id}"),
            Principal::Token(t) => match &t.team {
                Some(team) => format!("token:{} (team {team})", t.name),
                None => format!("token:{}", t.name),
            },
        }
    }

    /// 403 `other_team` unless the caller may act on a record owned by `owner`.
    pub fn require_team(&self, what: &str, owner: Option<&str>) -> Result<(), ApiError> {
        team_check(self.team(), what, owner)
    }
}

/// 403 `other_team` unless a caller acting for `caller_team` may act on `what`, owned
/// by `owner` (see `certkeeper_core::access::may_act_on`).
pub fn team_check(
    caller_team: Option<&str>,
    what: &str,
    owner: Option<&str>,
) -> Result<(), ApiError> {
    if certkeeper_core::access::may_act_on(caller_team, owner) {
        return Ok(());
    }
    let whose = match owner {
        Some(o) => format!("team {o}"),
        None => "no team".into(),
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "other_team",
        format!(
            "{what} belongs to {whose}; this token acts for team {} only",
            caller_team.unwrap_or_default()
        ),
    ))
}

/// Check what the matched route needs (see `api::ROUTE_NEEDS`) and hand the caller to
/// the handler. A refusal of an authenticated caller is audited with who tried.
/// Routes missing from the table are left to their handler's own extractor.
pub async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let need = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| crate::api::route_need(req.method().as_str(), m.as_str()));
    let wanted = match need {
        Some(Need::Permission(p)) => Some(p),
        Some(Need::Authenticated) => None,
        _ => return next.run(req).await,
    };
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Some(p) = wanted
        && let Err(e) = caller.require(p)
    {
        let subject: String = format!("{p} {} {}", parts.method, parts.uri.path())
            .chars()
            .take(300)
            .collect();
        tracing::warn!(actor = %caller.actor(), %subject, "permission denied");
        if let Err(err) = state
            .store
            .audit(
                &caller.actor(),
                "denied",
                &subject,
                OffsetDateTime::now_utc(),
            )
            .await
        {
            return ApiError::from(err).into_response();
        }
        return e.into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// A valid token always works, so failures from a shared address (NAT, a proxy)
    /// cannot lock out the clients that hold real tokens; failed attempts beyond the
    /// limit get 429 instead of 401. Tokens are 256-bit random (or ≥ 24 characters when
    /// preset), so the limit is about load and noise, not guessability.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already looked up by [`authorize`].
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
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
