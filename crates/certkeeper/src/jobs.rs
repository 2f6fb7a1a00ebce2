//! The agent's side of the job channel: claim this agent's jobs from the server, do
//! them, report each attempt. A deploy job writes files, reloads and rescans — but
//! only inside what `agent.toml`'s `[deploy]` table allows: the server can neither
//! make the agent write outside `allowed_dirs` nor run anything but `allowed_commands`.
//!
//! Commands run without a shell: the command line is split on whitespace into argv
//! (no quoting, no globbing, no variables) and must equal one allowed line word for word.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use certkeeper_core::deploy::{
    DeployFailure, check_file_path, check_mode, command_allowed, dir_allowed,
};
use certkeeper_core::jobs::JobKind;
use certkeeper_core::{Fingerprint, Observation, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::{AgentConfig, Link};
use crate::client::call;

/// `[deploy]` in agent.toml: what deployments may touch on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// Directories (and their subdirectories) deployments may write files into.
    pub allowed_dirs: Vec<PathBuf>,
    /// Reload commands deployments may run, each a whole command line.
    pub allowed_commands: Vec<String>,
    /// A reload command running longer than this is killed and the attempt fails.
    pub reload_timeout_seconds: u64,
    /// After the reload, rescan the endpoint for up to this long until it serves the
    /// new certificate.
    pub confirm_seconds: u64,
}

impl DeploySettings {
    /// Nothing set (not written into a fresh agent.toml: the operator adds it).
    pub fn is_default(&self) -> bool {
        *self == DeploySettings::default()
    }
}

impl Default for DeploySettings {
    fn default() -> Self {
        DeploySettings {
            allowed_dirs: Vec::new(),
            allowed_commands: Vec::new(),
            reload_timeout_seconds: 120,
            confirm_seconds: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ClaimedJob {
    id: String,
    kind: String,
    lease: String,
    #[serde(default)]
    lease_until: Option<String>,
    deploy: Option<DeployJob>,
    vulnscan: Option<ScanJob>,
    http01: Option<Http01Job>,
}

/// An http-01 token to serve until the job ends.
#[derive(Debug, Deserialize)]
struct Http01Job {
    token: String,
    key_authorization: String,
    request: String,
}

/// A vulnerability scan of endpoints this agent discovered.
#[derive(Debug, Deserialize)]
struct ScanJob {
    scan_id: String,
    endpoints: Vec<ScanJobEndpoint>,
    timeout_ms: u64,
    per_host_connections: usize,
    concurrency: usize,
    rate_per_second: u32,
    system_roots: bool,
    ca_pems: Vec<String>,
    expiring_within_days: u32,
    max_validity_days: u32,
    /// Revocation fetch settings (absent from servers older than them: defaults).
    #[serde(default = "yes")]
    online_revocation: bool,
    #[serde(default)]
    fetch_timeout_ms: Option<u64>,
    #[serde(default)]
    fetch_max_bytes: Option<usize>,
    #[serde(default)]
    fetch_allow_private: Vec<ipnet::IpNet>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct ScanJobEndpoint {
    host: String,
    ip: std::net::IpAddr,
    port: u16,
}

#[derive(Deserialize)]
struct DeployJob {
    deployment_id: String,
    sha256: String,
    files: Vec<DeployFile>,
    owner: Option<String>,
    group: Option<String>,
    reload: Vec<String>,
    endpoint: JobEndpoint,
}

impl std::fmt::Debug for DeployJob {
    // The files hold a private key: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployJob")
            .field("deployment_id", &self.deployment_id)
            .field("sha256", &self.sha256)
            .field(
                "files",
                &self.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DeployFile {
    part: String,
    path: PathBuf,
    mode: String,
    pem: String,
}

#[derive(Debug, Deserialize)]
struct JobEndpoint {
    host: String,
    port: u16,
}

/// A failed step: the code the server records and a message for the operator.
#[derive(Debug)]
struct StepError(DeployFailure, String);

fn step(code: DeployFailure) -> impl FnOnce(String) -> StepError {
    move |m| StepError(code, m)
}

/// What happened to one job, for the command's output.
#[derive(Debug, Serialize)]
pub struct JobReport {
    pub id: String,
    pub kind: String,
    /// `succeeded` or `failed` as the agent saw it; `state` is the server's verdict.
    pub outcome: String,
    pub error: Option<Value>,
    pub state: Option<String>,
    pub server_error: Option<Value>,
}

/// Claim this agent's due jobs, do each, report each; while it serves http-01 tokens,
/// claim again every second (an order's next challenge comes as a new job) and stop
/// serving each token when its job ends. Returns what happened.
pub async fn run_once(
    dir: &Path,
    cfg: &AgentConfig,
    link: &Link,
    responder: &Http01Responder,
) -> Result<Vec<JobReport>> {
    let mut reports = Vec::new();
    let mut serving: Vec<Serving> = Vec::new();
    loop {
        let url = format!("{}/api/v1/agent/jobs/claim", link.server);
        let claimed = call(
            link.http
                .post(&url)
                .bearer_auth(&link.credential)
                .json(&json!({})),
            &url,
        )
        .await;
        let v = match claimed {
            Ok(v) => v,
            // While tokens are served, a server that is briefly away is asked again.
            Err(e) if !serving.is_empty() => {
                eprintln!("error: claiming jobs: {e}");
                Value::Null
            }
            Err(e) => return Err(e.into()),
        };
        let jobs: Vec<ClaimedJob> = match &v["jobs"] {
            Value::Null => Vec::new(),
            j => serde_json::from_value(j.clone())
                .context("the server's list of jobs is not in the expected form")?,
        };
        for job in jobs {
            if job.kind == JobKind::Http01.as_str() {
                match start_http01(cfg, link, responder, &job).await {
                    Ok(s) => serving.push(s),
                    Err(r) => reports.push(*r),
                }
            } else {
                reports.push(run_job(dir, cfg, link, job).await);
            }
        }
        if serving.is_empty() {
            return Ok(reports);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for s in serving {
            match http01_state(link, &s).await {
                None => still.push(s),
                Some(state) => {
                    responder.stop(&s.token);
                    eprintln!(
                        "job {} (http01): {state}; no longer serving its token",
                        s.id
                    );
                    reports.push(JobReport {
                        id: s.id,
                        kind: JobKind::Http01.as_str().into(),
                        outcome: "succeeded".into(),
                        error: None,
                        server_error: (state != "succeeded").then(|| {
                            json!({"code": "job_ended", "message": format!("the job ended as {state}")})
                        }),
                        state: Some(state),
                    });
                }
            }
        }
        serving = still;
    }
}

/// An http-01 token being served for a job.
struct Serving {
    id: String,
    token: String,
    /// The lease ends here: the token is not served past it.
    until: Option<time::OffsetDateTime>,
}

/// The end state of a served job, or `None` while it goes on.
async fn http01_state(link: &Link, s: &Serving) -> Option<String> {
    if s.until
        .is_some_and(|u| time::OffsetDateTime::now_utc() >= u)
    {
        return Some("lease_ended".into());
    }
    let url = format!("{}/api/v1/agent/jobs/{}", link.server, s.id);
    match call(link.http.get(&url).bearer_auth(&link.credential), &url).await {
        Ok(v) => match v["state"].as_str() {
            Some(st @ ("succeeded" | "failed")) => Some(st.to_string()),
            Some("leased") => None,
            // Queued again or anything else: not this lease's any more.
            Some(other) => Some(other.to_string()),
            None => None,
        },
        Err(crate::client::ApiCallError::Refused { status: 404, .. }) => Some("gone".into()),
        // The server is away: keep serving until the lease ends.
        Err(_) => None,
    }
}

/// Token of an http-01 challenge: base64url (RFC 8555 §8.3).
fn plausible_token(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Serve an http01 job's token and tell the server so; a report if that fails.
async fn start_http01(
    cfg: &AgentConfig,
    link: &Link,
    responder: &Http01Responder,
    job: &ClaimedJob,
) -> Result<Serving, Box<JobReport>> {
    let failed = |StepError(code, message): StepError| async move {
        eprintln!("job {} (http01) failed: {code}: {message}", job.id);
        let body = json!({"lease": job.lease, "status": "failed", "error": {"code": code.code(), "message": message}});
        let (state, server_error) = report_result(link, &job.id, &body).await;
        Box::new(JobReport {
            id: job.id.clone(),
            kind: job.kind.clone(),
            outcome: "failed".into(),
            error: Some(json!({"code": code.code(), "message": message})),
            state,
            server_error,
        })
    };
    let h = match &job.http01 {
        Some(h) => h,
        None => {
            return Err(failed(StepError(
                DeployFailure::BadJob,
                "an http01 job without its token".into(),
            ))
            .await);
        }
    };
    if !plausible_token(&h.token)
        || h.key_authorization.len() > 1024
        || !h
            .key_authorization
            .strip_prefix(h.token.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    {
        return Err(failed(StepError(
            DeployFailure::BadJob,
            "the job's http-01 token or key authorization is malformed".into(),
        ))
        .await);
    }
    let Some(listen) = cfg.acme.as_ref().and_then(|a| a.http01_listen) else {
        return Err(failed(StepError(
            DeployFailure::BadJob,
            "this agent answers no http-01 challenges: set [acme] http01_listen in its agent.toml"
                .into(),
        ))
        .await);
    };
    if let Err(e) = responder.listen(listen).await {
        return Err(failed(StepError(DeployFailure::NotServed, e)).await);
    }
    responder.serve(&h.token, &h.key_authorization);
    let body = json!({"lease": job.lease, "status": "ready"});
    let url = format!("{}/api/v1/agent/jobs/{}/result", link.server, job.id);
    match call(
        link.http
            .post(&url)
            .bearer_auth(&link.credential)
            .json(&body),
        &url,
    )
    .await
    {
        Ok(_) => {
            eprintln!(
                "job {} (http01): serving a token on {listen} for request {}",
                job.id, h.request
            );
            Ok(Serving {
                id: job.id.clone(),
                token: h.token.clone(),
                until: job.lease_until.as_deref().and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                }),
            })
        }
        Err(e) => {
            responder.stop(&h.token);
            eprintln!("error: cannot report job {} ready: {e}", job.id);
            Err(Box::new(JobReport {
                id: job.id.clone(),
                kind: job.kind.clone(),
                outcome: "failed".into(),
                error: None,
                state: None,
                server_error: Some(json!({"code": "not_reported", "message": e.to_string()})),
            }))
        }
    }
}

/// Send a job's result; the server's verdict (state, error) as the report shows it.
async fn report_result(link: &Link, id: &str, body: &Value) -> (Option<String>, Option<Value>) {
    let url = format!("{}/api/v1/agent/jobs/{id}/result", link.server);
    let answer = call(
        link.http
            .post(&url)
            .bearer_auth(&link.credential)
            .json(body),
        &url,
    )
    .await;
    let (state, server_error) = match answer {
        Ok(v) => (
            v["state"].as_str().map(str::to_string),
            v["last_error"].clone(),
        ),
        Err(e) => {
            // The lease runs out and the server gives the job to a later claim.
            eprintln!("error: cannot report job {id}: {e}");
            (
                None,
                json!({"code": "not_reported", "message": e.to_string()}),
            )
        }
    };
    let server_error = match (&state, server_error) {
        (Some(s), e) if s != "succeeded" && !e.is_null() => Some(e),
        (None, e) => Some(e),
        _ => None,
    };
    (state, server_error)
}

/// Do one deploy or vulnscan job and report it.
async fn run_job(dir: &Path, cfg: &AgentConfig, link: &Link, job: ClaimedJob) -> JobReport {
    let result = match (job.kind.parse::<JobKind>(), &job.deploy) {
        (Ok(JobKind::Deploy), Some(d)) => deploy(dir, cfg, link, d).await,
        (Ok(JobKind::VulnScan), _) => match &job.vulnscan {
            Some(v) => vulnscan(link, &job.id, v).await,
            None => Err(StepError(
                DeployFailure::BadJob,
                "a vulnscan job without its endpoints".into(),
            )),
        },
        (Ok(JobKind::Deploy), None) => Err(StepError(
            DeployFailure::BadJob,
            "a deploy job without its deployment".into(),
        )),
        (Ok(JobKind::Http01), _) => Err(StepError(
            DeployFailure::BadJob,
            "an http01 job is served, not run".into(),
        )),
        (Err(e), _) => Err(StepError(
            DeployFailure::BadJob,
            format!("this agent ({}) does not do {e}", crate::agent::VERSION),
        )),
    };
    let body = match &result {
        Ok(()) => json!({"lease": job.lease, "status": "succeeded"}),
        Err(StepError(code, message)) => {
            eprintln!("job {} ({}) failed: {code}: {message}", job.id, job.kind);
            json!({"lease": job.lease, "status": "failed", "error": {"code": code.code(), "message": message}})
        }
    };
    let (state, server_error) = report_result(link, &job.id, &body).await;
    if let (Some(s), Some(e)) = (&state, &server_error)
        && result.is_ok()
    {
        eprintln!(
            "job {} ({}): the server says {s}: {}",
            job.id,
            job.kind,
            e["message"].as_str().unwrap_or("")
        );
    }
    JobReport {
        id: job.id,
        kind: job.kind,
        outcome: if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        }
        .into(),
        error: result
            .err()
            .map(|StepError(c, m)| json!({"code": c.code(), "message": m})),
        state,
        server_error,
    }
}

/// `[acme]` in agent.toml: this agent answers ACME http-01 challenges of orders that
/// name it, on this address (port 80 of the names, as the CA sees them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAcmeSettings {
    pub http01_listen: Option<SocketAddr>,
}

/// The agent's http-01 responder: bound on the first http01 job, then kept; it answers
/// `GET /.well-known/acme-challenge/{token}` for tokens of jobs being served and 404
/// for everything else.
#[derive(Clone, Default)]
pub struct Http01Responder {
    tokens: Arc<Mutex<HashMap<String, String>>>,
    bound: Arc<tokio::sync::Mutex<Option<Listening>>>,
}

/// Where the responder listens, and the task serving it.
type Listening = (SocketAddr, tokio::task::JoinHandle<()>);

impl Http01Responder {
    /// Listen on `addr` unless already listening there.
    async fn listen(&self, addr: SocketAddr) -> Result<(), String> {
        let mut bound = self.bound.lock().await;
        if let Some((a, task)) = bound.as_ref()
            && *a == addr
            && !task.is_finished()
        {
            return Ok(());
        }
        if let Some((_, task)) = bound.take() {
            task.abort();
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ([acme] http01_listen): {e}"))?;
        let tokens = self.tokens.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/acme-challenge/{token}",
                axum::routing::get(answer),
            )
            .with_state(tokens);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("error: the http-01 responder stopped: {e}");
            }
        });
        *bound = Some((addr, task));
        Ok(())
    }

    fn serve(&self, token: &str, key_authorization: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn stop(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

impl Drop for Http01Responder {
    fn drop(&mut self) {
        // The last handle gone: stop listening.
        if Arc::strong_count(&self.bound) == 1
            && let Ok(mut b) = self.bound.try_lock()
            && let Some((_, task)) = b.take()
        {
            task.abort();
        }
    }
}

async fn answer(
    axum::extract::State(tokens): axum::extract::State<Arc<Mutex<HashMap<String, String>>>>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let found = plausible_token(&token)
        .then(|| {
            tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&token)
                .cloned()
        })
        .flatten();
    match found {
        Some(key_auth) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            key_auth,
        )
            .into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// The revocation fetch limits a job asks for, clamped.
fn fetch_policy(v: &ScanJob) -> certkeeper_probe::fetch::FetchPolicy {
    let d = certkeeper_probe::fetch::FetchPolicy::default();
    certkeeper_probe::fetch::FetchPolicy {
        timeout: v
            .fetch_timeout_ms
            .map_or(d.timeout, |t| Duration::from_millis(t.clamp(100, 60_000))),
        max_bytes: v
            .fetch_max_bytes
            .map_or(d.max_bytes, |b| b.clamp(1024, 64 * 1024 * 1024)),
        allow_private: v.fetch_allow_private.clone(),
    }
}

/// Scan the job's endpoints from here and send the results to the server.
async fn vulnscan(link: &Link, job_id: &str, v: &ScanJob) -> Result<(), StepError> {
    use certkeeper_server::vulnscans::{CertJudgement, scan_endpoint};
    let mut extra = Vec::new();
    for pem in &v.ca_pems {
        let ders = certkeeper_pki::pem_to_ders(pem.as_bytes()).map_err(|e| {
            StepError(
                DeployFailure::BadJob,
                format!("a trusted CA in the job is unreadable: {e}"),
            )
        })?;
        extra.extend(ders);
    }
    let roots = certkeeper_pki::trust::TrustRoots {
        system: v.system_roots,
        extra,
    };
    let settings = certkeeper_server::vulnscans::VulnScanSettings {
        timeout: Duration::from_millis(v.timeout_ms.clamp(100, 30_000)),
        per_host_connections: v.per_host_connections.clamp(1, 16),
        concurrency: v.concurrency.clamp(1, 256),
        rate_per_second: v.rate_per_second,
        roots: roots.clone(),
        expiring_within_days: v.expiring_within_days,
        online_revocation: v.online_revocation,
        fetch: fetch_policy(v),
        schedules: Vec::new(),
        allow_local: Vec::new(),
    };
    let cfg = certkeeper_server::vulnscans::vuln_config(&settings);
    let judge = CertJudgement {
        roots: &roots,
        expiring_within_days: v.expiring_within_days,
        max_validity_days: v.max_validity_days,
        now: time::OffsetDateTime::now_utc(),
    };
    let targets: Vec<certkeeper_probe::Target> = v
        .endpoints
        .iter()
        .map(|e| {
            let named = e.host.parse::<std::net::IpAddr>().is_err();
            certkeeper_probe::Target {
                host: e.host.clone(),
                ip: e.ip,
                port: e.port,
                sni: named.then(|| e.host.clone()),
                named: true,
            }
        })
        .collect();
    // In batches: results reach the server as they come (a long job whose lease runs
    // out loses nothing already sent), and no request grows past the body limit.
    let url = format!("{}/api/v1/agent/scans/{}/results", link.server, v.scan_id);
    for batch in targets.chunks(25) {
        let results =
            futures_util::future::join_all(batch.iter().map(|t| scan_endpoint(t, &cfg, &judge)))
                .await;
        call(
            link.http
                .post(&url)
                .bearer_auth(&link.credential)
                .json(&json!({"job": job_id, "results": results})),
            &url,
        )
        .await
        .map_err(|e| {
            StepError(
                DeployFailure::NotServed,
                format!("the results could not be sent: {e}"),
            )
        })?;
    }
    Ok(())
}

/// A file of a deployment, checked and ready to write.
struct Planned<'a> {
    file: &'a DeployFile,
    mode: u32,
}

async fn deploy(
    dir: &Path,
    cfg: &AgentConfig,
    link: &Link,
    job: &DeployJob,
) -> Result<(), StepError> {
    let rules = &cfg.deploy;
    // Everything is checked before anything is touched.
    let expected: Fingerprint = job.sha256.parse().map_err(|_| {
        StepError(
            DeployFailure::BadJob,
            format!("{:?} is not a SHA-256", job.sha256),
        )
    })?;
    let planned = plan(rules, job, expected)?;
    if !job.reload.is_empty() && !command_allowed(&job.reload, &rules.allowed_commands) {
        return Err(StepError(
            DeployFailure::CommandNotAllowed,
            format!(
                "the reload command {:?} is not one of this agent's [deploy] allowed_commands in agent.toml",
                job.reload.join(" ")
            ),
        ));
    }
    let uid = job
        .owner
        .as_deref()
        .map(|o| resolve_id(o, Path::new("/etc/passwd")))
        .transpose()
        .map_err(step(DeployFailure::PermissionsFailed))?;
    let gid = job
        .group
        .as_deref()
        .map(|g| resolve_id(g, Path::new("/etc/group")))
        .transpose()
        .map_err(step(DeployFailure::PermissionsFailed))?;

    for p in &planned {
        write_file(p, uid, gid)?;
    }
    if !job.reload.is_empty() {
        reload(
            &job.reload,
            Duration::from_secs(rules.reload_timeout_seconds.max(1)),
        )
        .await?;
    }
    // Rescan until the endpoint serves the new certificate (a reload takes effect a
    // moment later) or time is up; the server judges from the pushed sighting.
    let observations = confirm(
        cfg,
        job,
        expected,
        Duration::from_secs(rules.confirm_seconds),
    )
    .await;
    crate::agent::deliver(dir, link, &observations)
        .await
        .map_err(|e| {
            StepError(
                DeployFailure::NotServed,
                format!("the rescan could not be delivered: {e:#}"),
            )
        })?;
    Ok(())
}

fn plan<'a>(
    rules: &DeploySettings,
    job: &'a DeployJob,
    expected: Fingerprint,
) -> Result<Vec<Planned<'a>>, StepError> {
    if job.files.is_empty() {
        return Err(StepError(
            DeployFailure::BadJob,
            "the job names no file".into(),
        ));
    }
    if rules.allowed_dirs.is_empty() {
        return Err(StepError(
            DeployFailure::PathNotAllowed,
            "this agent allows no deployments: [deploy] allowed_dirs in agent.toml is empty".into(),
        ));
    }
    // Allowed directories resolved once (symlinks followed), so a link cannot smuggle a
    // path out of them.
    let allowed: Vec<PathBuf> = rules
        .allowed_dirs
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let allowed_refs: Vec<&Path> = allowed.iter().map(PathBuf::as_path).collect();
    let list = rules
        .allowed_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::new();
    for f in &job.files {
        let refuse = |why: String| StepError(DeployFailure::PathNotAllowed, why);
        check_file_path(&f.path).map_err(refuse)?;
        let parent = f.path.parent().unwrap_or(Path::new("/"));
        let resolved = std::fs::canonicalize(parent).map_err(|e| {
            StepError(
                DeployFailure::PathNotAllowed,
                format!("{}: its directory cannot be used ({e})", f.path.display()),
            )
        })?;
        if !dir_allowed(&resolved, &allowed_refs) {
            return Err(refuse(format!(
                "{} is outside this agent's [deploy] allowed_dirs ({list}); nothing was written",
                f.path.display()
            )));
        }
        if let Ok(m) = std::fs::symlink_metadata(&f.path)
            && m.is_dir()
        {
            return Err(StepError(
                DeployFailure::WriteFailed,
                format!("{} is a directory", f.path.display()),
            ));
        }
        let mode = u32::from_str_radix(&f.mode, 8)
            .map_err(|_| format!("mode {:?} of {} is not octal", f.mode, f.path.display()))
            .and_then(|m| check_mode(m).map(|()| m))
            .map_err(step(DeployFailure::BadJob))?;
        // The certificate files must hold the certificate the job names.
        if f.part != "key" && f.part != "chain" {
            let ders = certkeeper_pki::pem_to_ders(f.pem.as_bytes())
                .map_err(|e| StepError(DeployFailure::BadJob, format!("{}: {e}", f.part)))?;
            if ders.first().map(|d| certkeeper_pki::sha256(d)) != Some(expected) {
                return Err(StepError(
                    DeployFailure::BadJob,
                    format!("the {} sent is not certificate {expected}", f.part),
                ));
            }
        }
        out.push(Planned { file: f, mode });
    }
    Ok(out)
}

/// A user or group by name (from `table`, /etc/passwd or /etc/group) or numeric id.
fn resolve_id(name: &str, table: &Path) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(table)
        .map_err(|e| format!("cannot read {}: {e}", table.display()))?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name))
                .then(|| f.nth(1).and_then(|id| id.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| {
            format!(
                "no user or group {name:?} in {} (give a numeric id instead)",
                table.display()
            )
        })
}

/// Write one file atomically: a new temp file beside it (mode set before any byte is
/// written), fsync, owner and group, the old file kept as a backup (hard link), rename.
fn write_file(p: &Planned<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<(), StepError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = &p.file.path;
    let write_err = |what: &str, e: std::io::Error| {
        StepError(
            DeployFailure::WriteFailed,
            format!("{what} {}: {e}", path.display()),
        )
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(
        ".{name}.ck-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| write_err("creating a temporary file for", e))?;
        f.write_all(p.file.pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| write_err("writing", e))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid).map_err(|e| {
                StepError(
                    DeployFailure::PermissionsFailed,
                    format!("setting the owner of {}: {e}", path.display()),
                )
            })?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(p.mode))
            .map_err(|e| {
                StepError(
                    DeployFailure::PermissionsFailed,
                    format!("setting the mode of {}: {e}", path.display()),
                )
            })?;
        if std::fs::symlink_metadata(path).is_ok() {
            let backup = crate::csr::backup_name(path);
            std::fs::hard_link(path, &backup).map_err(|e| write_err("backing up", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| write_err("replacing", e))?;
        if let Some(parent) = path.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Run the reload command (argv, no shell); a non-zero exit fails the attempt with the
/// end of what it printed.
async fn reload(argv: &[String], timeout: Duration) -> Result<(), StepError> {
    let line = argv.join(" ");
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            StepError(
                DeployFailure::ReloadFailed,
                format!("cannot start {line:?}: {e}"),
            )
        })?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            StepError(
                DeployFailure::ReloadFailed,
                format!(
                    "{line:?} did not finish within {} s and was killed",
                    timeout.as_secs()
                ),
            )
        })?
        .map_err(|e| StepError(DeployFailure::ReloadFailed, format!("{line:?}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if said.is_empty() {
        said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    let tail: String = said
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(StepError(
        DeployFailure::ReloadFailed,
        format!("{line:?} exited with {}: {tail}", out.status),
    ))
}

/// Probe every address of the endpoint until all serve `expected` or `patience` runs
/// out; returns the last round of observations.
async fn confirm(
    cfg: &AgentConfig,
    job: &DeployJob,
    expected: Fingerprint,
    patience: Duration,
) -> Vec<Observation> {
    let e = &job.endpoint;
    let probe_cfg = crate::agent::probe_config(&cfg.scan);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let ips: Vec<std::net::IpAddr> =
            match tokio::net::lookup_host((e.host.as_str(), e.port)).await {
                Ok(a) => {
                    let mut v: Vec<_> = a.map(|s| s.ip()).collect();
                    v.dedup();
                    v
                }
                Err(_) => Vec::new(),
            };
        let literal = e.host.parse::<std::net::IpAddr>().is_ok();
        let mut observations = Vec::new();
        for ip in ips {
            let target = certkeeper_probe::Target {
                host: e.host.clone(),
                ip,
                port: e.port,
                sni: (!literal).then(|| e.host.clone()),
                named: true,
            };
            observations.push(certkeeper_probe::probe(&target, &probe_cfg).await);
        }
        let served = |o: &Observation| match &o.outcome {
            Outcome::Tls { chain, .. } => chain.first().map(|d| certkeeper_pki::sha256(&d.0)),
            Outcome::Failed { .. } => None,
        };
        // Addresses that refuse (an IPv6 name of a v4-only server) do not count against.
        let answering: Vec<_> = observations.iter().filter_map(served).collect();
        let done = !answering.is_empty() && answering.iter().all(|s| *s == expected);
        if done || tokio::time::Instant::now() >= deadline {
            return observations;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Check the `[deploy]` table of an agent config (a test and `agent jobs` use it).
pub fn check_settings(s: &DeploySettings) -> Result<()> {
    for d in &s.allowed_dirs {
        if !d.is_absolute() {
            bail!(
                "[deploy] allowed_dirs: {} is not an absolute path",
                d.display()
            );
        }
    }
    for c in &s.allowed_commands {
        if c.split_whitespace().next().is_none() {
            bail!("[deploy] allowed_commands holds an empty command");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_by_name_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(resolve_id("www-data", &passwd), Ok(33));
        assert_eq!(resolve_id("1234", &passwd), Ok(1234));
        assert!(
            resolve_id("nobody-here", &passwd)
                .unwrap_err()
                .contains("numeric id")
        );
    }
}
