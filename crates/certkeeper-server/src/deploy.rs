//! Deployment targets of managed certificates, and the job channel agents pull them
//! through. The server decides; the agent does: it claims its own jobs (with a lease),
//! writes the files, reloads, rescans and pushes the sighting through the report path,
//! then reports the attempt. The server counts a deployment done only when its own
//! inventory shows the new certificate served at the endpoint.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use certkeeper_core::deploy::{
    DeployFailure, DeploymentStatus, ServedVerdict, Stalled, check_file_path, check_mode,
    parse_endpoint, served_verdict, split_command, stalled,
};
use certkeeper_core::jobs::{AfterFailure, DEFAULT_LEASE, JobKind, JobState, RetryPolicy};
use certkeeper_core::{Fingerprint, inventory::Agent};
use certkeeper_pki::import;
use certkeeper_store::{ClaimedJob, Deployment, JobOutcome, NewDeployment, Principal, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::manage::{fingerprint_param, open_cert_key, stored_certificate};
use crate::{AppState, views};

/// Agents' clocks are a little off; a sighting this much older than the claim still counts.
const CLOCK_SLACK: Duration = Duration::seconds(30);
/// A job waiting this long for an agent that has not asked is flagged in listings.
const OVERDUE: Duration = Duration::minutes(10);

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", msg)
}

fn parse_mode(s: Option<&str>, default: u32, what: &str) -> Result<u32, ApiError> {
    let Some(s) = s else { return Ok(default) };
    let m = u32::from_str_radix(s.trim().trim_start_matches("0o"), 8).map_err(|_| {
        invalid(format!(
            "{what} must be octal digits such as \"0640\", not {s:?}"
        ))
    })?;
    check_mode(m).map_err(|e| invalid(format!("{what}: {e}")))?;
    Ok(m)
}

fn owner_name(s: Option<String>, what: &str) -> Result<Option<String>, ApiError> {
    let Some(s) = s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ok = s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(invalid(format!(
            "{what} must be a user or group name or a numeric id, not {s:?}"
        )));
    }
    Ok(Some(s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeploymentRequest {
    agent_id: String,
    cert_path: Option<String>,
    chain_path: Option<String>,
    fullchain_path: Option<String>,
    key_path: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    /// Octal, for the certificate files [default "0644"].
    mode: Option<String>,
    /// Octal, for the key file [default "0600"].
    key_mode: Option<String>,
    /// Run after writing: split on whitespace into argv, run without a shell.
    reload_command: Option<String>,
    /// `host:port` where the new certificate must be seen served.
    endpoint: String,
}

/// `POST /api/v1/certificates/{sha256}/deployments`
pub async fn create_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    req: Result<Json<NewDeploymentRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(req)?;
    let fp = fingerprint_param(&sha)?;
    let cert = stored_certificate(&state, &fp).await?;
    // A team's token deploys only its team's managed certificates.
    let owner = state.store.managed_team(&fp).await?.flatten();
    caller.require_team(&format!("certificate {fp}"), owner.as_deref())?;
    if cert.facts.is_ca {
        return Err(invalid("a CA certificate is not deployed to a server"));
    }
    if state.store.sealed_key(&fp).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_private_key",
            "only managed certificates (with a stored key) can be deployed; import it with its key",
        ));
    }
    let mut paths = Vec::new();
    for (what, p) in [
        ("cert_path", &req.cert_path),
        ("chain_path", &req.chain_path),
        ("fullchain_path", &req.fullchain_path),
        ("key_path", &req.key_path),
    ] {
        if let Some(p) = p {
            if p.len() > 4096 || p.chars().any(char::is_control) {
                return Err(invalid(format!("{what} is not a usable path")));
            }
            check_file_path(std::path::Path::new(p))
                .map_err(|e| invalid(format!("{what}: {e}")))?;
            if paths.contains(p) {
                return Err(invalid(format!(
                    "{what} names a file already given for another part"
                )));
            }
            paths.push(p.clone());
        }
    }
    if paths.is_empty() {
        return Err(invalid(
            "give at least one of cert_path, chain_path, fullchain_path, key_path",
        ));
    }
    let (host, port) =
        parse_endpoint(&req.endpoint).map_err(|e| ApiError::bad_request("invalid_endpoint", e))?;
    let reload = req
        .reload_command
        .as_deref()
        .map(split_command)
        .unwrap_or_default();
    if reload.len() > 64 || reload.iter().any(|a| a.len() > 4096) {
        return Err(invalid("reload_command is too long"));
    }
    if !state.store.agent_active(&req.agent_id).await? {
        return Err(ApiError::bad_request(
            "unknown_agent",
            format!("no enrolled, unrevoked agent has the id {:?}", req.agent_id),
        ));
    }
    let d = NewDeployment {
        id: uuid::Uuid::new_v4().to_string(),
        certificate_sha256: fp.to_string(),
        agent_id: req.agent_id,
        cert_path: req.cert_path,
        chain_path: req.chain_path,
        fullchain_path: req.fullchain_path,
        key_path: req.key_path,
        owner: owner_name(req.owner, "owner")?,
        group: owner_name(req.group, "group")?,
        mode: parse_mode(req.mode.as_deref(), 0o644, "mode")?,
        key_mode: parse_mode(req.key_mode.as_deref(), 0o600, "key_mode")?,
        reload,
        endpoint_host: host,
        endpoint_port: port,
    };
    let now = OffsetDateTime::now_utc();
    state
        .store
        .create_deployment(
            &d,
            &uuid::Uuid::new_v4().to_string(),
            RetryPolicy::default().max_attempts,
            now,
        )
        .await?;
    state
        .store
        .audit(&caller.actor(), "deployment_created", &d.id, now)
        .await?;
    tracing::info!(deployment = %d.id, certificate = %fp, agent = %d.agent_id, "deployment created");
    let created = state.store.deployment(&d.id).await?;
    let agents = agents_by_id(&state).await?;
    Ok((
        StatusCode::CREATED,
        Json(deployment_view(&created, &agents, now)),
    ))
}

async fn agents_by_id(state: &AppState) -> Result<HashMap<String, Agent>, ApiError> {
    Ok(state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect())
}

fn mode_str(m: u32) -> String {
    format!("{m:04o}")
}

fn deployment_view(d: &Deployment, agents: &HashMap<String, Agent>, now: OffsetDateTime) -> Value {
    let s = &d.spec;
    let j = &d.job;
    let status = DeploymentStatus::of(j.state, j.attempts);
    let agent = agents.get(&s.agent_id);
    let last_contact = agent.and_then(|a| a.last_contact);
    let revoked = agent.is_none_or(|a| a.revoked_at.is_some());
    let note = match stalled(status, j.run_after, revoked, last_contact, OVERDUE, now) {
        Some(Stalled::AgentRevoked) => {
            Some("agent_revoked: the agent was revoked; it will never pick this up".to_string())
        }
        Some(Stalled::AgentOffline(c)) => Some(format!(
            "agent_offline: agent {} has not asked for jobs since {}",
            s.agent_id,
            c.map(views::rfc3339)
                .unwrap_or_else(|| "it enrolled".into())
        )),
        None => None,
    };
    let t = |x: Option<OffsetDateTime>| x.map(views::rfc3339);
    json!({
        "id": s.id,
        "certificate_sha256": s.certificate_sha256,
        "agent_id": s.agent_id,
        "endpoint": format_endpoint(&s.endpoint_host, s.endpoint_port),
        "files": {
            "cert_path": s.cert_path,
            "chain_path": s.chain_path,
            "fullchain_path": s.fullchain_path,
            "key_path": s.key_path,
        },
        "owner": s.owner,
        "group": s.group,
        "mode": mode_str(s.mode),
        "key_mode": mode_str(s.key_mode),
        "reload_command": (!s.reload.is_empty()).then(|| s.reload.join(" ")),
        "status": status.as_str(),
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "next_attempt_at": matches!(j.state, JobState::Queued).then(|| views::rfc3339(j.run_after)),
        "last_error": j.last_error_code.as_ref().map(|c| json!({"code": c, "message": j.last_error})),
        "note": note,
        "agent_last_contact": t(last_contact),
        "deployed_sha256": d.deployed_sha256,
        "deployed_at": t(d.deployed_at),
        "job_id": j.id,
        "created_at": views::rfc3339(d.created_at),
        "updated_at": views::rfc3339(j.updated_at),
    })
}

fn lease_error(e: StoreError) -> ApiError {
    match e {
        StoreError::LeaseLost => ApiError::new(
            StatusCode::CONFLICT,
            "lease_lost",
            "the lease on this job has ended; its result no longer counts",
        ),
        StoreError::NotFound => ApiError::not_found("job"),
        other => other.into(),
    }
}

fn job_state_view(j: &certkeeper_store::Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind.as_str(),
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "lease_until": j.lease_until.map(views::rfc3339),
        "last_error": j.last_error_code.as_ref().map(|c| json!({"code": c, "message": j.last_error})),
    })
}

/// An `http01` job's result: `ready` while the job stays leased (the order goes on),
/// or `failed` (the order fails with the agent's reason). It never succeeds from the
/// agent's side: the server ends it when the order is over.
async fn http01_result(
    state: &AppState,
    agent: &str,
    job: &certkeeper_store::Job,
    req: JobResult,
    now: OffsetDateTime,
) -> Result<Json<Value>, ApiError> {
    match (req.status.as_str(), req.error) {
        ("ready", None) => {
            state
                .store
                .http01_ready(&job.id, agent, &req.lease, now)
                .await
                .map_err(lease_error)?;
        }
        ("failed", Some(e)) => {
            let f: DeployFailure = e
                .code
                .parse()
                .map_err(|m: String| ApiError::bad_request("invalid_request", m))?;
            let outcome = JobOutcome::Failed {
                code: f.code().to_string(),
                message: e.message.chars().take(1000).collect(),
                retry_at: None,
            };
            state
                .store
                .finish_job(&job.id, agent, &req.lease, &outcome, now)
                .await
                .map_err(lease_error)?;
            tracing::warn!(job = %job.id, code = f.code(), "the agent cannot serve an http-01 token");
        }
        ("failed", None) => return Err(invalid("a failed result needs an error")),
        ("ready", Some(_)) => return Err(invalid("a ready result carries no error")),
        (other, _) => {
            return Err(invalid(format!(
                "an http01 job reports ready or failed (it ends with its order), not {other:?}"
            )));
        }
    }
    Ok(Json(job_state_view(&state.store.job(&job.id).await?)))
}

/// `GET /api/v1/agent/jobs/{id}`: where one of the caller's jobs stands (an agent
/// serving an http-01 token asks until the job ends).
pub async fn job_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = agent_of(&caller)?.to_string();
    state.store.expire_leases(OffsetDateTime::now_utc()).await?;
    match state.store.job(&id).await {
        Ok(j) if j.agent_id == agent => Ok(Json(job_state_view(&j))),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("job")),
        Err(e) => Err(e.into()),
    }
}

fn format_endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    certificate: Option<String>,
}

/// The team owning the certificate a deployment deploys (`None`: no team).
async fn team_of(state: &AppState, d: &Deployment) -> Result<Option<String>, ApiError> {
    let fp = fingerprint_param(&d.spec.certificate_sha256)?;
    Ok(state.store.managed_team(&fp).await?.flatten())
}

/// `GET /api/v1/deployments`: a team's token sees its team's deployments only.
pub async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q.map(|Query(q)| q).map_err(|e| invalid(e.body_text()))?;
    let cert = q
        .certificate
        .as_deref()
        .map(fingerprint_param)
        .transpose()?
        .map(|f| f.to_string());
    let now = OffsetDateTime::now_utc();
    state.store.expire_leases(now).await?;
    let agents = agents_by_id(&state).await?;
    let mut teams: HashMap<String, Option<String>> = HashMap::new();
    let mut items = Vec::new();
    for d in state.store.deployments(cert.as_deref()).await? {
        if let Some(scope) = caller.team() {
            let owner = match teams.get(&d.spec.certificate_sha256) {
                Some(t) => t.clone(),
                None => {
                    let t = team_of(&state, &d).await?;
                    teams.insert(d.spec.certificate_sha256.clone(), t.clone());
                    t
                }
            };
            if owner.as_deref() != Some(scope) {
                continue;
            }
        }
        items.push(deployment_view(&d, &agents, now));
    }
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// A deployment the caller may see: another team's is not found, as far as a team's
/// token can tell.
async fn deployment_or_404(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Deployment, ApiError> {
    let d = state.store.deployment(id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("deployment"),
        other => other.into(),
    })?;
    if caller.team().is_some()
        && !certkeeper_core::access::may_act_on(caller.team(), team_of(state, &d).await?.as_deref())
    {
        return Err(ApiError::not_found("deployment"));
    }
    Ok(d)
}

/// `GET /api/v1/deployments/{id}`
pub async fn show_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = OffsetDateTime::now_utc();
    state.store.expire_leases(now).await?;
    let d = deployment_or_404(&state, &caller, &id).await?;
    Ok(Json(deployment_view(&d, &agents_by_id(&state).await?, now)))
}

/// `POST /api/v1/deployments/{id}/retry`: start again now, with every attempt available.
pub async fn retry_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let now = OffsetDateTime::now_utc();
    state.store.expire_leases(now).await?;
    let d = deployment_or_404(&state, &caller, &id).await?;
    if d.job.state == JobState::Leased {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "deployment_in_progress",
            "the agent is working on this deployment now; wait for its result",
        ));
    }
    state
        .store
        .restart_deployment(
            &id,
            &d.spec.certificate_sha256,
            &uuid::Uuid::new_v4().to_string(),
            RetryPolicy::default().max_attempts,
            now,
        )
        .await?;
    state
        .store
        .audit(&caller.actor(), "deployment_retry", &id, now)
        .await?;
    let d = state.store.deployment(&id).await?;
    Ok(Json(deployment_view(&d, &agents_by_id(&state).await?, now)))
}

/// After a renewal: deploy the new certificate wherever the old one was deployed.
/// The renewal stands whatever happens here; a failure is logged and the targets keep
/// the old certificate (visible in the listing).
pub(crate) async fn redeploy_renewed(state: &AppState, old: Option<&str>, new: &Value) {
    let (Some(old), Some(new)) = (old, new["sha256"].as_str()) else {
        return;
    };
    let now = OffsetDateTime::now_utc();
    let result: Result<Vec<String>, StoreError> = async {
        let ids = state.store.deployments_of(old).await?;
        for id in &ids {
            state
                .store
                .restart_deployment(
                    id,
                    new,
                    &uuid::Uuid::new_v4().to_string(),
                    RetryPolicy::default().max_attempts,
                    now,
                )
                .await?;
        }
        Ok(ids)
    }
    .await;
    match result {
        Ok(ids) if !ids.is_empty() => {
            tracing::info!(
                old,
                new,
                deployments = ids.len(),
                "renewed certificate queued for deployment"
            )
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(old, new, error = %e, "could not queue the renewed certificate's deployments")
        }
    }
}

/// The caller's agent id; administrators do not take agent jobs.
pub(crate) fn agent_of(caller: &Caller) -> Result<&str, ApiError> {
    match &caller.0 {
        Principal::Agent { id } => Ok(id),
        Principal::Admin | Principal::Token(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only agents take jobs",
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// At most this many jobs [default 10, at most 100].
    limit: Option<u32>,
    /// How long the agent keeps the jobs before they are given back [default 300 s].
    lease_seconds: Option<u32>,
}

/// `POST /api/v1/agent/jobs/claim`: the caller's due jobs, leased to it. A deploy job
/// carries the certificate, chain and (when a key file is wanted) the private key,
/// opened from the vault for this agent only; each key handed out is audited.
pub async fn claim_jobs(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<ClaimRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let agent = agent_of(&caller)?.to_string();
    let req = match req {
        Err(JsonRejection::MissingJsonContentType(_)) => ClaimRequest::default(),
        other => body(other)?,
    };
    let limit = req.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(invalid("limit must be between 1 and 100"));
    }
    let lease = req
        .lease_seconds
        .map(i64::from)
        .unwrap_or(DEFAULT_LEASE.whole_seconds());
    if !(1..=3600).contains(&lease) {
        return Err(invalid("lease_seconds must be between 1 and 3600"));
    }
    let now = OffsetDateTime::now_utc();
    let claimed = state
        .store
        .claim_jobs(
            &agent,
            &uuid::Uuid::new_v4().to_string(),
            now,
            lease,
            i64::from(limit),
        )
        .await?;
    let mut jobs = Vec::new();
    for c in claimed {
        match job_payload(&state, &c).await {
            Ok(v) => jobs.push(v),
            Err(e) => {
                // The job cannot be handed out (its key no longer opens, say): recorded
                // on the job, not retried blindly.
                tracing::warn!(job = %c.job.id, error = %e.message, "job cannot be handed out");
                let outcome = JobOutcome::Failed {
                    code: e.code.to_string(),
                    message: e.message.clone(),
                    retry_at: None,
                };
                state
                    .store
                    .finish_job(&c.job.id, &agent, &c.lease_id, &outcome, now)
                    .await?;
            }
        }
    }
    Ok(Json(json!({"jobs": jobs})))
}

async fn job_payload(state: &AppState, c: &ClaimedJob) -> Result<Value, ApiError> {
    let j = &c.job;
    let mut v = json!({
        "id": j.id,
        "kind": j.kind.as_str(),
        "lease": c.lease_id,
        "lease_until": j.lease_until.map(views::rfc3339),
        "attempt": j.attempts,
        "max_attempts": j.max_attempts,
    });
    match j.kind {
        JobKind::Deploy => {
            let d = state.store.deployment_of_job(&j.id).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::GONE,
                    "superseded",
                    "the deployment has a newer job",
                )
            })?;
            v["deploy"] = deploy_payload(state, &d).await?;
        }
        JobKind::VulnScan => {
            v["vulnscan"] = crate::vulnscans::job_payload(state, j).await?;
        }
        JobKind::Http01 => {
            // The token and its key authorization (public by design: the CA fetches
            // them over plain HTTP); the account key never leaves the server.
            let h = state.store.http01_job(&j.id).await?.ok_or_else(|| {
                ApiError::new(StatusCode::GONE, "order_over", "the order has ended")
            })?;
            v["http01"] = json!({
                "token": h.token,
                "key_authorization": h.key_authorization,
                "request": j.subject,
            });
        }
    }
    Ok(v)
}

async fn deploy_payload(state: &AppState, d: &Deployment) -> Result<Value, ApiError> {
    let s = &d.spec;
    let fp: Fingerprint = fingerprint_param(&s.certificate_sha256)?;
    let cert = stored_certificate(state, &fp).await?;
    let chain = state.store.chain_of(&fp).await?;
    let served = import::served_chain(&chain);
    let pem =
        |ders: &[Vec<u8>]| -> String { ders.iter().map(|d| certkeeper_pki::to_pem(d)).collect() };
    let leaf_pem = certkeeper_pki::to_pem(&cert.der);
    let mut files = Vec::new();
    let mut file = |part: &str, path: &Option<String>, mode: u32, content: String| {
        if let Some(p) = path {
            files.push(json!({"part": part, "path": p, "mode": mode_str(mode), "pem": content}));
        }
    };
    file("certificate", &s.cert_path, s.mode, leaf_pem.clone());
    file("chain", &s.chain_path, s.mode, pem(served));
    file(
        "fullchain",
        &s.fullchain_path,
        s.mode,
        format!("{leaf_pem}{}", pem(served)),
    );
    if s.key_path.is_some() {
        let key = open_cert_key(state, &fp).await?;
        let key_pem = import::export::key_pem(&key)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "key_unavailable", e))?;
        state
            .store
            .audit(
                &format!("agent:{}", s.agent_id),
                "deploy_key",
                &s.certificate_sha256,
                OffsetDateTime::now_utc(),
            )
            .await?;
        file("key", &s.key_path, s.key_mode, key_pem);
    }
    Ok(json!({
        "deployment_id": s.id,
        "sha256": s.certificate_sha256,
        "files": files,
        "owner": s.owner,
        "group": s.group,
        "reload": s.reload,
        "endpoint": {"host": s.endpoint_host, "port": s.endpoint_port},
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobError {
    code: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// The lease the job was claimed with.
    lease: String,
    /// `succeeded` or `failed`; for an `http01` job, `ready` (serving the token now)
    /// or `failed` (the server ends it when the order is over).
    status: String,
    error: Option<JobError>,
}

/// `POST /api/v1/agent/jobs/{id}/result`: how the attempt went, from the agent holding
/// the lease. For a deployment, "succeeded" is the agent's claim; the server checks its
/// inventory for the new certificate at the endpoint before counting it done.
pub async fn job_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<JobResult>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let agent = agent_of(&caller)?.to_string();
    let req = body(req)?;
    let job = match state.store.job(&id).await {
        Ok(j) if j.agent_id == agent => j,
        // Another agent's job does not exist, as far as this agent can tell.
        Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::not_found("job")),
        Err(e) => return Err(e.into()),
    };
    let now = OffsetDateTime::now_utc();
    let policy = RetryPolicy::default();
    let failed = |f: DeployFailure, message: String| {
        let retry_at = match policy.after_failure(job.attempts, f.retryable(), now) {
            AfterFailure::RetryAt(t) => Some(t),
            AfterFailure::GiveUp => None,
        };
        JobOutcome::Failed {
            code: f.code().to_string(),
            message: message.chars().take(1000).collect(),
            retry_at,
        }
    };
    if job.kind == JobKind::Http01 {
        return http01_result(&state, &agent, &job, req, now).await;
    }
    if req.status == "ready" {
        return Err(invalid(format!(
            "only http01 jobs report ready; this is a {} job",
            job.kind
        )));
    }
    let deployment = match job.kind {
        JobKind::Deploy => state.store.deployment_of_job(&id).await?,
        // The results came through POST /api/v1/agent/scans/{id}/results.
        JobKind::VulnScan | JobKind::Http01 => None,
    };
    let outcome = match (req.status.as_str(), req.error) {
        ("failed", Some(e)) => {
            let f: DeployFailure = e
                .code
                .parse()
                .map_err(|m: String| ApiError::bad_request("invalid_request", m))?;
            failed(f, e.message)
        }
        ("failed", None) => return Err(invalid("a failed result needs an error")),
        ("succeeded", None) => match &deployment {
            Some(d) => {
                let expected: Fingerprint = fingerprint_param(&d.spec.certificate_sha256)?;
                let sightings = state
                    .store
                    .endpoint_sightings(&d.spec.endpoint_host, d.spec.endpoint_port)
                    .await?;
                let since = job.leased_at.unwrap_or(now) - CLOCK_SLACK;
                let ep = format_endpoint(&d.spec.endpoint_host, d.spec.endpoint_port);
                match served_verdict(expected, &sightings, since) {
                    ServedVerdict::Served => JobOutcome::Succeeded,
                    ServedVerdict::OtherServed(other) => failed(
                        DeployFailure::OldCertificateServed,
                        format!(
                            "{ep} still serves {other}, not {expected}, after the files were written and the server reloaded"
                        ),
                    ),
                    ServedVerdict::NotSeen => failed(
                        DeployFailure::NotServed,
                        format!(
                            "no sighting of {ep} serving a certificate reached the server since the attempt began"
                        ),
                    ),
                }
            }
            // A superseded job: nothing to verify against.
            None => JobOutcome::Succeeded,
        },
        ("succeeded", Some(_)) => return Err(invalid("a succeeded result carries no error")),
        (other, _) => {
            return Err(invalid(format!(
                "status must be succeeded or failed, not {other:?}"
            )));
        }
    };
    let finished = state
        .store
        .finish_job(&id, &agent, &req.lease, &outcome, now)
        .await
        .map_err(|e| match e {
            StoreError::LeaseLost => ApiError::new(
                StatusCode::CONFLICT,
                "lease_lost",
                "the lease on this job has ended; its result no longer counts",
            ),
            StoreError::NotFound => ApiError::not_found("job"),
            other => other.into(),
        })?;
    if let (JobOutcome::Succeeded, Some(d)) = (&outcome, &deployment) {
        state
            .store
            .mark_deployed(&d.spec.id, &d.spec.certificate_sha256, now)
            .await?;
        tracing::info!(deployment = %d.spec.id, certificate = %d.spec.certificate_sha256, "deployment confirmed served");
    } else if let JobOutcome::Failed {
        code,
        message,
        retry_at,
    } = &outcome
    {
        tracing::warn!(job = %id, code, message, retry_at = ?retry_at, "job attempt failed");
    }
    let mut v = json!({
        "id": finished.id,
        "state": finished.state.as_str(),
        "attempts": finished.attempts,
        "last_error": finished.last_error_code.as_ref().map(|c| json!({"code": c, "message": finished.last_error})),
    });
    if let Some(d) = deployment {
        let d = state.store.deployment(&d.spec.id).await?;
        v["deployment"] = deployment_view(&d, &agents_by_id(&state).await?, now);
    }
    Ok(Json(v))
}
