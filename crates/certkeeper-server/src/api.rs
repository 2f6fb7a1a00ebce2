//! The REST API under `/api/v1`. Every route but `/healthz` is authenticated; agents
//! may only enroll, report, and claim and report their own jobs.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use certkeeper_core::expiry::expiring_cutoff;
use certkeeper_core::inventory::CertificateFilter;
use certkeeper_core::report::{Outcome, ScanReport};
use certkeeper_core::{Fingerprint, MAX_CERT_DER_BYTES};
use certkeeper_store::{NewAgent, ParsedCert, Principal, ReportMeta, Sighting, SightingResult};
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::auth::{self, Admin, Caller, Need, new_token, token_hash};
use crate::error::ApiError;
use crate::{AppState, views};
use certkeeper_core::access::Permission as P;

/// The committed OpenAPI document (a test keeps it in step with [`ROUTES`]).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Every (method, path) the router serves, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/certificates"),
    ("get", "/api/v1/certificates/{sha256}"),
    ("get", "/api/v1/endpoints"),
    ("get", "/api/v1/agents"),
    ("delete", "/api/v1/agents/{id}"),
    ("post", "/api/v1/agents/enrollment-tokens"),
    ("post", "/api/v1/agents/enroll"),
    ("post", "/api/v1/reports"),
    ("post", "/api/v1/certificates/import"),
    ("post", "/api/v1/certificates/{sha256}/export"),
    ("get", "/api/v1/audit"),
    ("post", "/api/v1/requests"),
    ("get", "/api/v1/requests"),
    ("get", "/api/v1/requests/{id}"),
    ("post", "/api/v1/cas"),
    ("get", "/api/v1/cas"),
    ("post", "/api/v1/cas/{name}/issue"),
    ("post", "/api/v1/requests/{id}/acme"),
    ("post", "/api/v1/certificates/{sha256}/renew"),
    ("post", "/api/v1/renewals"),
    ("get", "/api/v1/server/certificate"),
    ("put", "/api/v1/server/certificate"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("post", "/api/v1/certificates/{sha256}/deployments"),
    ("get", "/api/v1/deployments"),
    ("get", "/api/v1/deployments/{id}"),
    ("post", "/api/v1/deployments/{id}/retry"),
    ("post", "/api/v1/scans"),
    ("get", "/api/v1/scans"),
    ("get", "/api/v1/scans/{id}"),
    ("get", "/api/v1/findings"),
    ("post", "/api/v1/agent/scans/{id}/results"),
    ("post", "/api/v1/agent/jobs/claim"),
    ("post", "/api/v1/agent/jobs/{id}/result"),
    ("get", "/api/v1/agent/jobs/{id}"),
    ("get", "/api/v1/notifications/preview"),
    ("post", "/api/v1/notifications/run"),
    ("post", "/api/v1/notifications/test"),
    ("get", "/api/v1/notifications/deliveries"),
    ("get", "/api/v1/notifications/deliveries/{id}"),
    ("get", "/api/v1/tickets"),
    ("post", "/api/v1/ticketing/{system}/test"),
    ("put", "/api/v1/certificates/{sha256}/meta"),
];

/// What every route of [`ROUTES`] needs from its caller; [`auth::authorize`] enforces
/// it and a test checks every route against it.
pub const ROUTE_NEEDS: &[(&str, &str, Need)] = &[
    ("get", "/healthz", Need::Public),
    ("get", "/api/v1/openapi.json", Need::Authenticated),
    ("get", "/api/v1/certificates", Need::Permission(P::Read)),
    (
        "get",
        "/api/v1/certificates/{sha256}",
        Need::Permission(P::Read),
    ),
    ("get", "/api/v1/endpoints", Need::Permission(P::Read)),
    ("get", "/api/v1/agents", Need::Permission(P::Admin)),
    ("delete", "/api/v1/agents/{id}", Need::Permission(P::Admin)),
    (
        "post",
        "/api/v1/agents/enrollment-tokens",
        Need::Permission(P::Admin),
    ),
    ("post", "/api/v1/agents/enroll", Need::Enrollment),
    ("post", "/api/v1/reports", Need::Agent),
    (
        "post",
        "/api/v1/certificates/import",
        Need::Permission(P::Import),
    ),
    // With the key, the handler also asks for export_key (and audits a refusal).
    (
        "post",
        "/api/v1/certificates/{sha256}/export",
        Need::Permission(P::Read),
    ),
    ("get", "/api/v1/audit", Need::Permission(P::Admin)),
    ("post", "/api/v1/requests", Need::Permission(P::Request)),
    ("get", "/api/v1/requests", Need::Permission(P::Read)),
    ("get", "/api/v1/requests/{id}", Need::Permission(P::Read)),
    ("post", "/api/v1/cas", Need::Permission(P::Admin)),
    ("get", "/api/v1/cas", Need::Permission(P::Read)),
    (
        "post",
        "/api/v1/cas/{name}/issue",
        Need::Permission(P::Issue),
    ),
    (
        "post",
        "/api/v1/requests/{id}/acme",
        Need::Permission(P::Request),
    ),
    // Renewing from an internal CA also asks for issue.
    (
        "post",
        "/api/v1/certificates/{sha256}/renew",
        Need::Permission(P::Request),
    ),
    ("post", "/api/v1/renewals", Need::Permission(P::Admin)),
    (
        "get",
        "/api/v1/server/certificate",
        Need::Permission(P::Read),
    ),
    (
        "put",
        "/api/v1/server/certificate",
        Need::Permission(P::Admin),
    ),
    ("post", "/api/v1/tokens", Need::Permission(P::Admin)),
    ("get", "/api/v1/tokens", Need::Permission(P::Admin)),
    ("delete", "/api/v1/tokens/{id}", Need::Permission(P::Admin)),
    (
        "post",
        "/api/v1/certificates/{sha256}/deployments",
        Need::Permission(P::Deploy),
    ),
    ("get", "/api/v1/deployments", Need::Permission(P::Deploy)),
    (
        "get",
        "/api/v1/deployments/{id}",
        Need::Permission(P::Deploy),
    ),
    (
        "post",
        "/api/v1/deployments/{id}/retry",
        Need::Permission(P::Deploy),
    ),
    ("post", "/api/v1/scans", Need::Permission(P::Admin)),
    ("get", "/api/v1/scans", Need::Permission(P::Read)),
    ("get", "/api/v1/scans/{id}", Need::Permission(P::Read)),
    ("get", "/api/v1/findings", Need::Permission(P::Read)),
    ("post", "/api/v1/agent/scans/{id}/results", Need::Agent),
    ("post", "/api/v1/agent/jobs/claim", Need::Agent),
    ("post", "/api/v1/agent/jobs/{id}/result", Need::Agent),
    ("get", "/api/v1/agent/jobs/{id}", Need::Agent),
    (
        "get",
        "/api/v1/notifications/preview",
        Need::Permission(P::Read),
    ),
    (
        "post",
        "/api/v1/notifications/run",
        Need::Permission(P::Admin),
    ),
    (
        "post",
        "/api/v1/notifications/test",
        Need::Permission(P::Admin),
    ),
    (
        "get",
        "/api/v1/notifications/deliveries",
        Need::Permission(P::Read),
    ),
    (
        "get",
        "/api/v1/notifications/deliveries/{id}",
        Need::Permission(P::Read),
    ),
    ("get", "/api/v1/tickets", Need::Permission(P::Read)),
    (
        "post",
        "/api/v1/ticketing/{system}/test",
        Need::Permission(P::Admin),
    ),
    (
        "put",
        "/api/v1/certificates/{sha256}/meta",
        Need::Permission(P::Admin),
    ),
];

/// What the route `method path` (OpenAPI path syntax) needs, if it is declared.
pub fn route_need(method: &str, path: &str) -> Option<Need> {
    ROUTE_NEEDS
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == path)
        .map(|(_, _, n)| *n)
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let max_report = state.config.max_report_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/certificates", get(list_certificates))
        .route("/api/v1/certificates/{sha256}", get(show_certificate))
        .route("/api/v1/endpoints", get(list_endpoints))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{id}", delete(revoke_agent))
        .route(
            "/api/v1/agents/enrollment-tokens",
            post(create_enrollment_token),
        )
        .route("/api/v1/agents/enroll", post(enroll))
        .route(
            "/api/v1/reports",
            post(report).layer(DefaultBodyLimit::max(max_report)),
        )
        .route(
            "/api/v1/certificates/import",
            post(crate::manage::import_certificate),
        )
        .route(
            "/api/v1/certificates/{sha256}/export",
            post(crate::manage::export_certificate),
        )
        .route("/api/v1/audit", get(crate::manage::audit_log))
        .route(
            "/api/v1/requests",
            post(crate::manage::create_request).get(crate::manage::list_requests),
        )
        .route("/api/v1/requests/{id}", get(crate::manage::show_request))
        .route(
            "/api/v1/requests/{id}/acme",
            post(crate::manage::order_acme),
        )
        .route(
            "/api/v1/certificates/{sha256}/renew",
            post(crate::manage::renew_certificate),
        )
        .route("/api/v1/renewals", post(crate::manage::run_renewals))
        .route(
            "/api/v1/cas",
            post(crate::manage::create_ca).get(crate::manage::list_cas),
        )
        .route("/api/v1/cas/{name}/issue", post(crate::manage::issue))
        .route(
            "/api/v1/server/certificate",
            get(crate::manage::server_certificate).put(crate::manage::use_server_certificate),
        )
        .route(
            "/api/v1/certificates/{sha256}/deployments",
            post(crate::deploy::create_deployment),
        )
        .route("/api/v1/deployments", get(crate::deploy::list_deployments))
        .route(
            "/api/v1/deployments/{id}",
            get(crate::deploy::show_deployment),
        )
        .route(
            "/api/v1/deployments/{id}/retry",
            post(crate::deploy::retry_deployment),
        )
        .route(
            "/api/v1/scans",
            post(crate::vulnscans::create_scan).get(crate::vulnscans::list_scans),
        )
        .route("/api/v1/scans/{id}", get(crate::vulnscans::show_scan))
        .route("/api/v1/findings", get(crate::vulnscans::list_findings))
        .route(
            "/api/v1/notifications/preview",
            get(crate::notify::preview_route),
        )
        .route("/api/v1/notifications/run", post(crate::notify::run_route))
        .route(
            "/api/v1/notifications/test",
            post(crate::notify::test_route),
        )
        .route(
            "/api/v1/notifications/deliveries",
            get(crate::notify::list_deliveries),
        )
        .route(
            "/api/v1/notifications/deliveries/{id}",
            get(crate::notify::show_delivery),
        )
        .route("/api/v1/tickets", get(crate::notify::list_tickets))
        .route(
            "/api/v1/ticketing/{system}/test",
            post(crate::notify::test_ticketing),
        )
        .route(
            "/api/v1/certificates/{sha256}/meta",
            put(crate::notify::put_meta),
        )
        .route(
            "/api/v1/agent/scans/{id}/results",
            post(crate::vulnscans::agent_results),
        )
        .route("/api/v1/agent/jobs/claim", post(crate::deploy::claim_jobs))
        .route(
            "/api/v1/agent/jobs/{id}/result",
            post(crate::deploy::job_result),
        )
        .route("/api/v1/agent/jobs/{id}", get(crate::deploy::job_status))
        .route(
            "/api/v1/tokens",
            post(crate::tokens::create).get(crate::tokens::list),
        )
        .route("/api/v1/tokens/{id}", delete(crate::tokens::revoke))
        // After every route: the check of what each route needs.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi(_caller: Caller) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertQuery {
    expiring_within_days: Option<u32>,
    expired: Option<bool>,
    q: Option<String>,
    issuer: Option<String>,
    serial: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
    format: Option<String>,
}

fn page_size(limit: Option<u32>, state: &AppState) -> Result<u32, ApiError> {
    match limit {
        None => Ok(100),
        Some(0) => Err(ApiError::bad_request(
            "invalid_request",
            "limit must be at least 1",
        )),
        Some(n) if n > state.config.max_page_size => Err(ApiError::bad_request(
            "invalid_request",
            format!("limit must be at most {}", state.config.max_page_size),
        )),
        Some(n) => Ok(n),
    }
}

async fn list_certificates(
    State(state): State<AppState>,
    _caller: Caller,
    q: Result<Query<CertQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let now = OffsetDateTime::now_utc();
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("format must be json or csv, not {other:?}"),
            ));
        }
    };
    let filter = CertificateFilter {
        not_after_before: match q.expiring_within_days {
            Some(d) if d > 36_500 => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "expiring_within_days must be at most 36500",
                ));
            }
            d => d.map(|d| expiring_cutoff(now, d)),
        },
        expired: q.expired,
        now: Some(now),
        query: q.q.filter(|s| !s.is_empty()),
        issuer: q.issuer.filter(|s| !s.is_empty()),
        serial: q.serial.filter(|s| !s.is_empty()),
    };
    let limit = if csv && q.limit.is_none() {
        state.config.max_page_size
    } else {
        page_size(q.limit, &state)?
    };
    let page = state
        .store
        .list_certificates(&filter, limit, q.cursor.as_deref())
        .await?;
    let shas: Vec<Fingerprint> = page.items.iter().map(|c| c.facts.sha256).collect();
    let endpoints = state.store.endpoints_serving(&shas).await?;
    let none = Vec::new();
    if csv {
        let mut out = String::from(views::CSV_HEADER);
        for c in &page.items {
            out.push_str(&views::csv_row(
                c,
                endpoints.get(&c.facts.sha256).unwrap_or(&none),
                now,
            ));
        }
        let mut resp = (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"certificates.csv\"",
                ),
            ],
            out,
        )
            .into_response();
        if let Some(next) = page.next_cursor
            && let Ok(v) = next.parse()
        {
            resp.headers_mut().insert("x-next-cursor", v);
        }
        return Ok(resp);
    }
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|c| views::certificate(c, endpoints.get(&c.facts.sha256).unwrap_or(&none), now))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": page.next_cursor})).into_response())
}

async fn show_certificate(
    State(state): State<AppState>,
    _caller: Caller,
    Path(sha): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let fp = crate::manage::fingerprint_param(&sha)?;
    let cert = crate::manage::stored_certificate(&state, &fp).await?;
    let endpoints = state.store.endpoints_serving(&[fp]).await?;
    let history = state.store.served_history_of(&fp).await?;
    let now = OffsetDateTime::now_utc();
    let mut v = views::certificate(
        &cert,
        endpoints.get(&fp).map(Vec::as_slice).unwrap_or(&[]),
        now,
    );
    v["pem"] = Value::String(certkeeper_pki::to_pem(&cert.der));
    let owner = state.store.managed_team(&fp).await?;
    v["managed"] = Value::Bool(owner.is_some());
    v["team"] = json!(owner.flatten());
    v["served_history"] = history
        .iter()
        .map(|(h, p, period)| views::served(h, *p, period))
        .collect();
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointQuery {
    host: Option<String>,
    port: Option<u16>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_endpoints(
    State(state): State<AppState>,
    _caller: Caller,
    q: Result<Query<EndpointQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let limit = page_size(q.limit, &state)?;
    let page = state
        .store
        .list_endpoints(q.host.as_deref(), q.port, limit, q.cursor.as_deref())
        .await?;
    let items: Vec<Value> = page.items.iter().map(views::endpoint).collect();
    Ok(Json(
        json!({"items": items, "next_cursor": page.next_cursor}),
    ))
}

async fn list_agents(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let agents = state.store.list_agents().await?;
    let items: Vec<Value> = agents.iter().map(views::agent).collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

async fn revoke_agent(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .revoke_agent(&id, OffsetDateTime::now_utc())
        .await
        .map_err(|e| match e {
            certkeeper_store::StoreError::NotFound => ApiError::not_found("agent"),
            other => other.into(),
        })?;
    tracing::info!(agent = %id, "agent revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentTokenRequest {
    /// Seconds until the token expires (default one day, at most 30 days).
    expires_in_seconds: Option<u64>,
    /// How many agents may enroll with it (default 1).
    uses: Option<u32>,
}

async fn create_enrollment_token(
    State(state): State<AppState>,
    _admin: Admin,
    req: Result<Json<EnrollmentTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = match req {
        Err(JsonRejection::MissingJsonContentType(_)) => EnrollmentTokenRequest::default(),
        other => body(other)?,
    };
    let secs = req.expires_in_seconds.unwrap_or(86_400);
    if secs == 0 || secs > 30 * 86_400 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "expires_in_seconds must be between 1 and 2592000 (30 days)",
        ));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > 10_000 {
        return Err(ApiError::bad_request(
            "invalid_request",
            "uses must be between 1 and 10000",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let expires_at = now + Duration::seconds(secs as i64);
    let token = new_token("ck_enroll_");
    state
        .store
        .create_enrollment_token(&token_hash(&token), now, expires_at, uses)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "expires_at": views::rfc3339(expires_at), "uses": uses})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    name: Option<String>,
    hostname: String,
    version: String,
}

/// Enroll with an enrollment token as the bearer; returns the agent's credential once.
async fn enroll(
    State(state): State<AppState>,
    bearer: auth::EnrollmentBearer,
    req: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let r = body(req)?;
    let clean = |s: &str, max: usize| -> Result<String, ApiError> {
        let t = s.trim();
        if t.is_empty() || t.len() > max || t.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "invalid_request",
                "hostname, name and version must be 1 to 253 printable characters",
            ));
        }
        Ok(t.to_string())
    };
    let hostname = clean(&r.hostname, 253)?;
    let agent = NewAgent {
        id: uuid::Uuid::new_v4().to_string(),
        name: clean(r.name.as_deref().unwrap_or(&hostname), 253)?,
        hostname,
        version: clean(&r.version, 64)?,
    };
    let credential = new_token("ck_agent_");
    let result = state
        .store
        .enroll_agent(
            &token_hash(&bearer.token),
            &agent,
            &token_hash(&credential),
            OffsetDateTime::now_utc(),
        )
        .await;
    if let Err(certkeeper_store::StoreError::EnrollmentRefused) = &result {
        bearer.refused(&state);
    }
    result?;
    tracing::info!(agent = %agent.id, host = %agent.hostname, "agent enrolled");
    Ok((
        StatusCode::CREATED,
        Json(json!({"agent_id": agent.id, "credential": credential})),
    ))
}

/// Decode the presented chains ourselves; the agent's claims about certificates are
/// never used.
fn decode(report: &ScanReport, now: OffsetDateTime) -> Vec<Sighting> {
    report
        .observations
        .iter()
        .map(|o| {
            let result = match &o.outcome {
                Outcome::Failed { kind, message } => SightingResult::Failed {
                    kind: kind.as_str().to_string(),
                    message: message.chars().take(500).collect(),
                },
                Outcome::Tls {
                    protocol,
                    cipher,
                    starttls,
                    chain,
                } => {
                    let mut parsed = Vec::with_capacity(chain.len());
                    let mut problems = Vec::new();
                    for (i, der) in chain.iter().enumerate() {
                        let r = if der.0.len() > MAX_CERT_DER_BYTES {
                            Err(format!(
                                "{} bytes is larger than any real certificate",
                                der.0.len()
                            ))
                        } else {
                            certkeeper_pki::parse_der(&der.0).map_err(|e| e.to_string())
                        };
                        match r {
                            Ok(facts) => parsed.push(ParsedCert {
                                facts,
                                der: der.0.clone(),
                            }),
                            Err(e) => problems.push((i, e)),
                        }
                    }
                    match problems.first() {
                        Some((0, e)) => SightingResult::Failed {
                            kind: "bad_certificate".into(),
                            message: format!("the presented certificate does not decode: {e}"),
                        },
                        _ => SightingResult::Tls {
                            protocol: protocol.chars().take(32).collect(),
                            cipher: cipher.chars().take(128).collect(),
                            starttls: starttls.clone(),
                            chain: parsed,
                            note: (!problems.is_empty()).then(|| {
                                problems
                                    .iter()
                                    .map(|(i, e)| {
                                        format!("chain certificate #{i} does not decode: {e}")
                                    })
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            }),
                        },
                    }
                }
            };
            Sighting {
                host: o.host.to_ascii_lowercase(),
                ip: o.ip,
                port: o.port,
                sni: o.sni.clone(),
                // An agent's clock is a claim: a time in the future would freeze the
                // endpoint against later, true sightings.
                seen_at: o.seen_at.min(now),
                result,
            }
        })
        .collect()
}

async fn report(
    State(state): State<AppState>,
    caller: Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Principal::Agent { id: agent_id } = caller.0 else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only agents send reports",
        ));
    };
    let raw = raw.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "report_too_large",
                format!(
                    "a report may be at most {} bytes; split it",
                    state.config.max_report_bytes
                ),
            )
        } else {
            ApiError::bad_request("invalid_request", e.body_text())
        }
    })?;
    let report: ScanReport = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::bad_request("malformed_report", format!("the report is not valid: {e}"))
    })?;
    report
        .check()
        .map_err(|e| ApiError::bad_request("malformed_report", e.to_string()))?;
    let sightings = decode(&report, OffsetDateTime::now_utc());
    let summary = state
        .store
        .ingest(
            &ReportMeta {
                agent_id: &agent_id,
                report_id: &report.report_id,
                watched_endpoints: report.watched_endpoints,
                hostname: &report.hostname,
                agent_version: &report.agent_version,
            },
            &sightings,
            OffsetDateTime::now_utc(),
        )
        .await?;
    tracing::info!(
        agent = %agent_id,
        report = %report.report_id,
        observations = summary.observations,
        new_certificates = summary.new_certificates,
        duplicate = summary.duplicate,
        "report applied"
    );
    Ok(Json(serde_json::to_value(summary).unwrap_or(Value::Null)))
}
