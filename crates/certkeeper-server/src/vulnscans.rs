//! Vulnerability scans: one endpoint scanned end to end ([`scan_endpoint`], shared
//! with `certkeeper agent vulnscan`), and the API that runs scans from the server
//! (`POST /api/v1/scans`), shows them (`GET /api/v1/scans/{id}`) and lists findings
//! (`GET /api/v1/findings`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use certkeeper_core::findings::{
    CertCheck, ChainTrust, Finding, FindingKind, RevocationFacts, Severity, TlsFacts,
    cert_findings, revocation_findings, tls_findings,
};
use certkeeper_pki::trust::TrustRoots;
use certkeeper_probe::fetch::FetchPolicy;
use certkeeper_probe::revocation::{Stapling, check_revocation};
use certkeeper_probe::{ProbeConfig, RateLimiter, Target, VulnConfig, vulnscan};
use certkeeper_store::{FindingFilter, ScanEndpoint};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, views};

/// Limits and judgement of scans the server runs (`[vulnscan]`).
#[derive(Debug, Clone)]
pub struct VulnScanSettings {
    pub timeout: Duration,
    pub per_host_connections: usize,
    /// Connections at once over one scan.
    pub concurrency: usize,
    /// New connections per second over one scan; 0 for no limit.
    pub rate_per_second: u32,
    pub roots: TrustRoots,
    pub expiring_within_days: u32,
    /// Ask the leaf's OCSP responder and fetch its CRL.
    pub online_revocation: bool,
    /// Limits of those fetches (time, size, private addresses allowed).
    pub fetch: FetchPolicy,
    /// Scans that run by themselves.
    pub schedules: Vec<ScanSchedule>,
    /// Loopback and link-local ranges the server may scan itself anyway (by default it
    /// never scans its own host or link-local addresses an agent may have reported).
    pub allow_local: Vec<ipnet::IpNet>,
}

/// Whether the server refuses to scan `ip` itself.
fn local_refused(ip: IpAddr, allow: &[ipnet::IpNet]) -> bool {
    let local = match ip {
        IpAddr::V4(v) => v.is_loopback() || v.is_link_local() || v.is_unspecified(),
        IpAddr::V6(v) => {
            v.is_loopback() || v.is_unspecified() || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    local && !allow.iter().any(|n| n.contains(&ip))
}

/// `[[vulnscan.schedule]]`: a group of endpoints scanned on a schedule.
#[derive(Debug, Clone)]
pub struct ScanSchedule {
    pub name: String,
    pub schedule: certkeeper_core::schedule::Schedule,
    /// Host names or patterns (`*.example.com`, IP addresses); empty: every endpoint.
    pub hosts: Vec<String>,
    /// Ports; empty: every port.
    pub ports: Vec<u16>,
}

impl ScanSchedule {
    fn covers(&self, e: &ScanEndpoint) -> bool {
        (self.ports.is_empty() || self.ports.contains(&e.port))
            && (self.hosts.is_empty()
                || self
                    .hosts
                    .iter()
                    .any(|h| h == "*" || certkeeper_core::findings::name_matches(h, &e.host)))
    }
}

/// An occurrence missed by more than this (no server was running) is skipped.
const SCHEDULE_GRACE: time::Duration = time::Duration::minutes(15);

/// Every replica runs this every 30 s; the claim in the database starts each
/// occurrence of each schedule once.
pub async fn schedule_pass(state: &AppState, now: OffsetDateTime) -> Result<Vec<String>, ApiError> {
    let mut started = Vec::new();
    for sch in &state.config.vulnscan.schedules {
        let Some(due) = sch.schedule.due(now, SCHEDULE_GRACE) else {
            continue;
        };
        let id = uuid::Uuid::new_v4().to_string();
        if !state.store.claim_schedule_run(&sch.name, due, &id).await? {
            continue;
        }
        let endpoints: Vec<ScanEndpoint> = state
            .store
            .all_endpoints()
            .await?
            .into_iter()
            .filter(|e| sch.covers(e))
            .collect();
        tracing::info!(schedule = %sch.name, due = %views::rfc3339(due), endpoints = endpoints.len(), "scheduled scan");
        start_scan(state, &id, &format!("schedule:{}", sch.name), endpoints).await?;
        started.push(id);
    }
    Ok(started)
}

impl Default for VulnScanSettings {
    fn default() -> Self {
        VulnScanSettings {
            timeout: Duration::from_secs(3),
            per_host_connections: 4,
            concurrency: 32,
            rate_per_second: 0,
            roots: TrustRoots {
                system: true,
                extra: Vec::new(),
            },
            expiring_within_days: 30,
            online_revocation: true,
            fetch: FetchPolicy::default(),
            schedules: Vec::new(),
            allow_local: Vec::new(),
        }
    }
}

/// One endpoint's scan: `domain@IP:port` with what was seen and found.
#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointReport {
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<TlsFacts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<ChainTrust>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainEntry>,
    /// Stapling and the OCSP/CRL answers about the leaf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationFacts>,
    pub findings: Vec<Finding>,
    /// The kinds this scan tested (an open finding not found is fixed only if tested).
    #[serde(default)]
    pub evaluated: Vec<certkeeper_core::findings::FindingKind>,
    /// What could not be judged although the endpoint answered (trust, a certificate
    /// that does not decode); the findings stand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A certificate of the presented chain, as reported.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChainEntry {
    pub sha256: String,
    pub subject: String,
    pub issuer: String,
    pub not_after: String,
    pub signature_algorithm: String,
}

/// What judges the certificate side of a scan.
#[derive(Debug, Clone)]
pub struct CertJudgement<'a> {
    pub roots: &'a TrustRoots,
    pub expiring_within_days: u32,
    pub max_validity_days: u32,
    pub now: OffsetDateTime,
}

/// Scan one endpoint: the wire checks, then the chain (from the first flight, or a
/// real TLS 1.3 handshake when the server offers nothing older) and its findings.
pub async fn scan_endpoint(
    t: &Target,
    cfg: &VulnConfig,
    judge: &CertJudgement<'_>,
) -> EndpointReport {
    let mut report = EndpointReport {
        host: t.host.clone(),
        ip: t.ip,
        port: t.port,
        error: None,
        facts: None,
        trust: None,
        chain: Vec::new(),
        revocation: None,
        findings: Vec::new(),
        evaluated: Vec::new(),
        warnings: Vec::new(),
    };
    let scan = match vulnscan(t, cfg).await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let mut chain = scan.chain.clone();
    let mut report_connections = 0;
    if chain.is_empty() {
        let pc = ProbeConfig {
            connect_timeout: cfg.timeout,
            handshake_timeout: cfg.timeout,
            legacy_fallback: false,
            ..ProbeConfig::default()
        };
        report_connections += 1;
        if let certkeeper_core::Outcome::Tls { chain: c, .. } =
            certkeeper_probe::probe(t, &pc).await.outcome
        {
            chain = c.into_iter().map(|d| d.0).collect();
        }
    }
    let mut findings = tls_findings(&scan.facts);
    let facts: Vec<_> = chain
        .iter()
        .filter_map(|d| certkeeper_pki::parse_der(d).ok())
        .collect();
    if !facts.is_empty() && facts.len() == chain.len() {
        let trust = match certkeeper_pki::trust::evaluate(&chain, judge.roots) {
            Ok(t) => Some(t),
            Err(e) => {
                report.warnings.push(format!("trust not evaluated: {e}"));
                None
            }
        };
        let ip_text = t.ip.to_string();
        let name = if t.sni.is_some() {
            t.host.as_str()
        } else {
            ip_text.as_str()
        };
        let check = CertCheck {
            chain: &facts,
            name: Some(name),
            now: judge.now,
            expiring_within_days: judge.expiring_within_days,
            max_validity_days: judge.max_validity_days,
            trust: trust.clone(),
        };
        findings.extend(cert_findings(&check));
        let stapling = Stapling {
            offered: scan.stapling,
            response: scan.ocsp_staple.as_deref(),
        };
        let revocation =
            check_revocation(&chain, stapling, cfg.revocation.as_ref(), judge.now).await;
        findings.extend(revocation_findings(&revocation));
        report.revocation = Some(revocation);
        report.trust = trust;
        report.chain = facts
            .iter()
            .map(|f| ChainEntry {
                sha256: f.sha256.to_string(),
                subject: f.subject.clone(),
                issuer: f.issuer.clone(),
                not_after: views::rfc3339(f.not_after),
                signature_algorithm: f.signature_algorithm.clone(),
            })
            .collect();
    } else if !chain.is_empty() {
        report
            .warnings
            .push("the server's certificate could not be decoded".into());
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    let cert_checked = !report.chain.is_empty();
    report.evaluated = certkeeper_core::findings::evaluated_kinds(
        &scan.facts,
        cert_checked,
        cert_checked && report.trust.is_some(),
    );
    report.findings = findings;
    let mut facts_out = scan.facts;
    // The TLS 1.3 handshake that fetched the certificate counts too.
    facts_out.connections += report_connections;
    report.facts = Some(facts_out);
    report
}

/// The probe limits of one scan run.
pub fn vuln_config(s: &VulnScanSettings) -> VulnConfig {
    VulnConfig {
        timeout: s.timeout,
        per_host_connections: s.per_host_connections,
        host_slots: Default::default(),
        global: Some(Arc::new(tokio::sync::Semaphore::new(s.concurrency.max(1)))),
        limiter: (s.rate_per_second > 0).then(|| Arc::new(RateLimiter::new(s.rate_per_second))),
        revocation: s.online_revocation.then(|| s.fetch.clone()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewScan {
    /// `HOST:PORT` of inventory endpoints (every address seen for that name); none:
    /// every endpoint of the inventory.
    #[serde(default)]
    endpoints: Vec<String>,
}

fn endpoint_key(s: &str) -> Result<(String, u16), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_endpoint",
            format!("endpoint {s:?}: expected HOST:PORT"),
        )
    };
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h.to_ascii_lowercase(), p.parse().map_err(|_| bad())?))
}

/// `POST /api/v1/scans`: scan now, from the server. Answers at once with the scan's
/// id; results arrive endpoint by endpoint (`GET /api/v1/scans/{id}`).
pub async fn create_scan(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<NewScan>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = match req {
        Err(JsonRejection::MissingJsonContentType(_)) => NewScan::default(),
        other => other
            .map(|Json(r)| r)
            .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?,
    };
    let mut endpoints: Vec<ScanEndpoint> = Vec::new();
    if req.endpoints.is_empty() {
        endpoints = state.store.all_endpoints().await?;
    } else {
        for e in &req.endpoints {
            let (host, port) = endpoint_key(e)?;
            let found = state.store.endpoints_named(&host, port).await?;
            if found.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no endpoint {host}:{port} in the inventory"),
                ));
            }
            for f in found {
                if !endpoints.contains(&f) {
                    endpoints.push(f);
                }
            }
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let v = start_scan(&state, &id, &caller.actor(), endpoints).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

/// Create scan `id` over `endpoints`: each endpoint is scanned by the agent that saw
/// it (from where it is reachable), or by the server when no active agent owns it.
async fn start_scan(
    state: &AppState,
    id: &str,
    actor: &str,
    endpoints: Vec<ScanEndpoint>,
) -> Result<Value, ApiError> {
    let now = OffsetDateTime::now_utc();
    state
        .store
        .create_scan(id, actor, endpoints.len(), now)
        .await?;
    let total = endpoints.len();
    let mut by_agent: std::collections::BTreeMap<String, Vec<ScanEndpoint>> = Default::default();
    let mut here = Vec::new();
    for e in endpoints {
        match &e.agent_id {
            Some(a) if state.store.agent_active(a).await? => {
                by_agent.entry(a.clone()).or_default().push(e)
            }
            _ => here.push(e),
        }
    }
    let mut agents = Vec::new();
    for (agent, list) in &by_agent {
        let job = uuid::Uuid::new_v4().to_string();
        state
            .store
            .create_scan_job(id, &job, agent, list, now)
            .await?;
        agents.push(json!({"agent": agent, "job": job, "endpoints": list.len()}));
    }
    let by_server = here.len();
    let task_state = state.clone();
    let scan_id = id.to_string();
    tokio::spawn(async move { run_scan(task_state, scan_id, here).await });
    Ok(json!({
        "id": id,
        "status": "running",
        "endpoints": total,
        "by_server": by_server,
        "by_agents": agents,
    }))
}

/// `GET /api/v1/scans`: the latest scans, newest first.
pub async fn list_scans(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let scans = state.store.scans(100).await?;
    let items: Vec<Value> = scans
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "status": s.status,
                "requested_by": s.requested_by,
                "endpoints": s.endpoints_total,
                "created_at": views::rfc3339(s.created_at),
                "finished_at": s.finished_at.map(views::rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

async fn run_scan(state: AppState, id: String, endpoints: Vec<ScanEndpoint>) {
    let settings = &state.config.vulnscan;
    let cfg = vuln_config(settings);
    let judge = CertJudgement {
        roots: &settings.roots,
        expiring_within_days: settings.expiring_within_days,
        max_validity_days: state.config.policy.max_validity_days,
        now: OffsetDateTime::now_utc(),
    };
    let work = endpoints.iter().map(|e| {
        let (cfg, judge, state, id) = (&cfg, &judge, &state, &id);
        async move {
            let Ok(ip) = e.ip.parse::<IpAddr>() else {
                let _ = state
                    .store
                    .record_scan_result(id, e, OffsetDateTime::now_utc(), Some("not an IP address"), None, &[], &[])
                    .await;
                return;
            };
            if local_refused(ip, &state.config.vulnscan.allow_local) {
                let _ = state
                    .store
                    .record_scan_result(
                        id,
                        e,
                        OffsetDateTime::now_utc(),
                        Some("refused: the server does not scan loopback or link-local addresses (allow them with [vulnscan] allow_local)"),
                        None,
                        &[],
                        &[],
                    )
                    .await;
                return;
            }
            let named = e.host.parse::<IpAddr>().is_err();
            let t = Target {
                host: e.host.clone(),
                ip,
                port: e.port,
                sni: named.then(|| e.host.clone()),
                named: true,
            };
            let r = scan_endpoint(&t, cfg, judge).await;
            let facts = r.facts.as_ref().and_then(|f| serde_json::to_value(f).ok());
            let at = OffsetDateTime::now_utc();
            if let Err(err) = state
                .store
                .record_scan_result(id, e, at, r.error.as_deref(), facts.as_ref(), &r.findings, &r.evaluated)
                .await
            {
                tracing::error!(scan = %id, endpoint = %format!("{}:{}", e.host, e.port), error = %err, "scan result not stored");
            } else if r.error.is_none()
                && let Err(err) = crate::notify::queue_vulnerability_tickets(
                    state,
                    &e.host,
                    ip,
                    e.port,
                    &r.findings,
                    r.chain.first().map(|c| c.sha256.as_str()),
                    at,
                )
                .await
            {
                tracing::error!(scan = %id, error = %err.message, "vulnerability tickets not queued");
            }
        }
    });
    futures_util::future::join_all(work).await;
    if let Err(e) = state
        .store
        .finish_scan(&id, OffsetDateTime::now_utc())
        .await
    {
        tracing::error!(scan = %id, error = %e, "scan not marked done");
    }
}

fn finding_view(f: &Finding) -> Value {
    json!({
        "kind": f.kind.as_str(),
        "severity": f.severity.as_str(),
        "title": f.title,
        "evidence": f.evidence,
        "fix": f.fix,
        "suites": f.suites,
    })
}

/// What an agent needs to run its part of a scan.
pub(crate) async fn job_payload(
    state: &AppState,
    j: &certkeeper_store::Job,
) -> Result<Value, ApiError> {
    let targets = state.store.scan_job_targets(&j.id).await?;
    let s = &state.config.vulnscan;
    let cas: Vec<String> = s
        .roots
        .extra
        .iter()
        .map(|d| certkeeper_pki::to_pem(d))
        .collect();
    Ok(json!({
        "scan_id": j.subject,
        "endpoints": targets.iter().map(|t| json!({"host": t.host, "ip": t.ip, "port": t.port})).collect::<Vec<_>>(),
        "timeout_ms": s.timeout.as_millis() as u64,
        "per_host_connections": s.per_host_connections,
        "concurrency": s.concurrency,
        "rate_per_second": s.rate_per_second,
        "system_roots": s.roots.system,
        "ca_pems": cas,
        "expiring_within_days": s.expiring_within_days,
        "max_validity_days": state.config.policy.max_validity_days,
        "online_revocation": s.online_revocation,
        "fetch_timeout_ms": s.fetch.timeout.as_millis() as u64,
        "fetch_max_bytes": s.fetch.max_bytes,
        "fetch_allow_private": s.fetch.allow_private.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentResults {
    /// The vulnscan job these results belong to.
    job: String,
    results: Vec<EndpointReport>,
}

/// Largest number of findings one endpoint result may carry, and longest text.
const MAX_FINDINGS: usize = 200;
const MAX_TEXT: usize = 8 * 1024;

/// `POST /api/v1/agent/scans/{id}/results`: an agent's results for the endpoints of
/// its job in scan `id` (only those), stored as the server's own are.
pub async fn agent_results(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<AgentResults>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let agent = crate::deploy::agent_of(&caller)?.to_string();
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let job = match state.store.job(&req.job).await {
        Ok(j)
            if j.agent_id == agent
                && j.subject == id
                && j.kind == certkeeper_core::jobs::JobKind::VulnScan
                && j.state == certkeeper_core::jobs::JobState::Leased =>
        {
            j
        }
        Ok(_) | Err(certkeeper_store::StoreError::NotFound) => {
            return Err(ApiError::not_found("scan job"));
        }
        Err(e) => return Err(e.into()),
    };
    let targets = state.store.scan_job_targets(&job.id).await?;
    if req.results.len() > targets.len() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "more results than the job has endpoints",
        ));
    }
    for (i, r) in req.results.iter().enumerate() {
        if req.results[..i]
            .iter()
            .any(|x| x.host == r.host && x.ip == r.ip && x.port == r.port)
        {
            return Err(ApiError::bad_request(
                "invalid_request",
                "an endpoint's result is given twice",
            ));
        }
        let suites = r.findings.iter().map(|f| f.suites.len()).sum::<usize>()
            + r.facts
                .as_ref()
                .map_or(0, |f| f.protocols.iter().map(|p| p.suites.len()).sum());
        if suites > 4000 {
            return Err(ApiError::bad_request(
                "invalid_request",
                "a result lists too many suites",
            ));
        }
    }
    for r in &req.results {
        let ip = r.ip.to_string();
        if !targets
            .iter()
            .any(|t| t.host == r.host && t.ip == ip && t.port == r.port)
        {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "{}@{}:{} is not an endpoint of this job",
                    r.host, r.ip, r.port
                ),
            ));
        }
        let long = r
            .findings
            .iter()
            .any(|f| f.title.len() + f.evidence.len() + f.fix.len() > MAX_TEXT)
            || r.error.as_ref().is_some_and(|e| e.len() > MAX_TEXT);
        if r.findings.len() > MAX_FINDINGS || long {
            return Err(ApiError::bad_request(
                "invalid_request",
                "a result carries too many or too long findings",
            ));
        }
    }
    let now = OffsetDateTime::now_utc();
    for r in &req.results {
        let e = targets
            .iter()
            .find(|t| t.host == r.host && t.ip == r.ip.to_string() && t.port == r.port)
            .expect("checked above");
        let facts = r.facts.as_ref().and_then(|f| serde_json::to_value(f).ok());
        state
            .store
            .record_scan_result(
                &id,
                e,
                now,
                r.error.as_deref(),
                facts.as_ref(),
                &r.findings,
                &r.evaluated,
            )
            .await?;
        if r.error.is_none() {
            crate::notify::queue_vulnerability_tickets(
                &state,
                &r.host,
                r.ip,
                r.port,
                &r.findings,
                r.chain.first().map(|c| c.sha256.as_str()),
                now,
            )
            .await?;
        }
    }
    let done = state.store.finish_scan(&id, now).await?;
    Ok(Json(
        json!({"stored": req.results.len(), "scan_done": done}),
    ))
}

/// `GET /api/v1/scans/{id}`
pub async fn show_scan(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (scan, results) = state.store.scan(&id).await?;
    let results: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "host": r.endpoint.host,
                "ip": r.endpoint.ip,
                "port": r.endpoint.port,
                "scanned_at": views::rfc3339(r.scanned_at),
                "error": r.error,
                "findings": r.findings.iter().map(finding_view).collect::<Vec<_>>(),
                "new": r.changes.new.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                "fixed": r.changes.fixed.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                "facts": r.facts,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": scan.id,
        "status": scan.status,
        "requested_by": scan.requested_by,
        "created_at": views::rfc3339(scan.created_at),
        "finished_at": scan.finished_at.map(views::rfc3339),
        "endpoints": scan.endpoints_total,
        "endpoints_done": results.len(),
        "results": results,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingQuery {
    endpoint: Option<String>,
    severity: Option<String>,
    kind: Option<String>,
    /// `open` (default), `fixed` or `all`.
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/findings?endpoint=HOST:PORT&severity=high&kind=…&status=open|fixed|all`
pub async fn list_findings(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<FindingQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut f = FindingFilter {
        limit: q.limit.unwrap_or(1000).min(state.config.max_page_size),
        ..FindingFilter::default()
    };
    if let Some(e) = &q.endpoint {
        let (h, p) = endpoint_key(e)?;
        f.host = Some(h);
        f.port = Some(p);
    }
    if let Some(s) = &q.severity {
        f.min_severity = Some(
            s.parse::<Severity>()
                .map_err(|e| ApiError::bad_request("invalid_request", e))?,
        );
    }
    if let Some(k) = &q.kind {
        f.kind = Some(
            k.parse::<FindingKind>()
                .map_err(|e| ApiError::bad_request("invalid_request", e))?,
        );
    }
    match q.status.as_deref() {
        None | Some("open") => {}
        Some("fixed") => f.fixed = Some(true),
        Some("all") => f.all = true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("status {other:?}: expected open, fixed or all"),
            ));
        }
    }
    let rows = state.store.findings(&f).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = finding_view(&r.finding);
            v["host"] = json!(r.endpoint.host);
            v["ip"] = json!(r.endpoint.ip);
            v["port"] = json!(r.endpoint.port);
            v["status"] = json!(if r.open { "open" } else { "fixed" });
            v["first_seen"] = json!(views::rfc3339(r.first_seen));
            v["last_seen"] = json!(views::rfc3339(r.last_seen));
            v["fixed_at"] = json!(r.fixed_at.map(views::rfc3339));
            v["scan_id"] = json!(r.scan_id);
            v
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_leaves_its_own_host_and_link_local_alone_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for local in ["127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0"] {
            assert!(local_refused(ip(local), &[]), "{local}");
        }
        for remote in ["10.1.2.3", "192.0.2.10", "2001:db8::1"] {
            assert!(!local_refused(ip(remote), &[]), "{remote}");
        }
        let allow = ["127.0.0.0/8".parse().unwrap()];
        assert!(!local_refused(ip("127.0.0.1"), &allow));
        assert!(local_refused(ip("169.254.169.254"), &allow));
    }
}
