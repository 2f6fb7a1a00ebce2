//! `POST/GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`: scoped API tokens, made
//! and revoked by an administrator. The secret is shown once; only its SHA-256 is kept.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use certkeeper_core::access::{self, Permissions};
use certkeeper_store::{NewScopedToken, ScopedToken, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::{Caller, new_token, token_hash};
use crate::error::ApiError;
use crate::{AppState, views};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default)]
    team: Option<String>,
    /// Permission names: read, import, request, issue, export_key, admin.
    permissions: Vec<String>,
}

fn view(t: &ScopedToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "team": t.team,
        "permissions": t.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "created_at": views::rfc3339(t.created_at),
    })
}

/// `POST /api/v1/tokens`
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let bad = |e: access::AccessError| ApiError::bad_request("invalid_request", e.to_string());
    let permissions = Permissions::parse_list(&req.permissions.join(",")).map_err(bad)?;
    let name = req.name.trim();
    let team = req.team.as_deref().map(str::trim).filter(|t| !t.is_empty());
    access::check_token(name, team, &permissions).map_err(bad)?;
    let id = uuid::Uuid::new_v4().to_string();
    let secret = new_token("ck_token_");
    let now = OffsetDateTime::now_utc();
    state
        .store
        .create_scoped_token(
            &NewScopedToken {
                id: &id,
                name,
                team,
                permissions: &permissions,
                token_hash: &token_hash(&secret),
            },
            &caller.actor(),
            now,
        )
        .await?;
    tracing::info!(token = %id, name = %name, team = ?team, permissions = %permissions.to_list(), "API token created");
    let mut warnings = Vec::new();
    if let Some(t) = team
        && !state.config.policy.has_team(t)
    {
        warnings.push(format!(
            "this server has no [policy.teams.{t}]: the server-wide policy applies to team {t}"
        ));
    }
    let mut body = view(&ScopedToken {
        id,
        name: name.to_string(),
        team: team.map(str::to_string),
        permissions,
        created_at: now,
    });
    body["token"] = Value::String(secret);
    body["warnings"] = json!(warnings);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/tokens`: every scoped token, never its secret.
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state
        .store
        .scoped_tokens()
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// `DELETE /api/v1/tokens/{id}`: the token stops working with the next request, on
/// every replica of the database.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let t = state
        .store
        .revoke_scoped_token(&id, &caller.actor(), OffsetDateTime::now_utc())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("token"),
            other => other.into(),
        })?;
    tracing::info!(token = %t.id, name = %t.name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}
