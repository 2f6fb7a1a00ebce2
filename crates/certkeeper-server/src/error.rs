//! The API's one error type: an HTTP status, a stable code and a safe message. Causes
//! are logged here, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use certkeeper_store::StoreError;
use serde_json::json;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable snake_case code that scripts may match on.
    pub code: &'static str,
    pub message: String,
    /// Extra fields of the error object (e.g. the list of policy violations).
    extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// When to try again (an upstream CA asked to wait): sent as `Retry-After` and
    /// `retry_after`, and used by the renewal scheduler.
    pub retry_at: Option<time::OffsetDateTime>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            retry_at: None,
        }
    }
    /// Not before `at`: a `Retry-After` header and a `retry_after` field (RFC 3339).
    pub fn retry_at(mut self, at: time::OffsetDateTime) -> Self {
        self.retry_at = Some(at);
        self.with("retry_after", json!(crate::views::rfc3339(at)))
    }
    /// Add a field to the error object, beside `code` and `message`.
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), value);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not do that",
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        if let Some(extra) = self.extra {
            error.extend(*extra);
        }
        let body = json!({ "error": error });
        let mut rsp = (self.status, Json(body)).into_response();
        if let Some(at) = self.retry_at {
            let secs = (at - time::OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0)
                + 1;
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                rsp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        rsp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::InvalidCursor => {
                ApiError::bad_request("invalid_cursor", "the cursor is not one this server issued")
            }
            StoreError::Exists(what) => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{what} exists already"),
            ),
            StoreError::EnrollmentRefused => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "enrollment_refused",
                "the enrollment token is unknown, expired or used up",
            ),
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the inventory could not be read or written; try again later",
                )
            }
        }
    }
}
