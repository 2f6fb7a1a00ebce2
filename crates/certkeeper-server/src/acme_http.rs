//! The http-01 responder: a plain-HTTP listener (`[acme] http01_listen`, port 80 in
//! production) that answers `/.well-known/acme-challenge/{token}` for tokens of ACME
//! orders in flight, from the database (so any replica behind the name answers), and
//! nothing else.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use certkeeper_connect::acme::{BoxFuture, Http01Tokens};
use certkeeper_store::Store;
use time::{Duration, OffsetDateTime};

/// Tokens kept in the store while their order is in flight (at most an hour).
pub(crate) struct StoreTokens(pub Store);

impl Http01Tokens for StoreTokens {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .put_http01_token(
                    token,
                    key_authorization,
                    OffsetDateTime::now_utc() + Duration::hours(1),
                )
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .delete_http01_token(token)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Tokens are base64url (RFC 8555 §8.3); anything else is not ours.
fn plausible(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn challenge(State(store): State<Store>, Path(token): Path<String>) -> Response {
    if !plausible(&token) {
        return StatusCode::NOT_FOUND.into_response();
    }
    match store.http01_token(&token, OffsetDateTime::now_utc()).await {
        Ok(Some(key_auth)) => {
            tracing::info!("answered an http-01 challenge");
            (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                key_auth,
            )
                .into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "http-01 token lookup failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The responder's router: the one route, 404 for everything else.
pub(crate) fn router(store: Store) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .with_state(store)
}
