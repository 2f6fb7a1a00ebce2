//! `certkeeper agent …`: enroll with a server, configure what to watch, scan and
//! push the results (through a local spool, so nothing is lost while the server is away).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use certkeeper_core::report::{MAX_OBSERVATIONS_PER_REPORT, Observation, Outcome, ScanReport};
use certkeeper_core::target::{AddressRange, parse_server_name, split_list};
use certkeeper_core::watchlist::DiscoverChange;
use certkeeper_core::{FailureKind, PortSet, Watchlist};
use certkeeper_probe::{ProbeConfig, Target};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::Output;
use crate::client::{self, ApiCallError, Trust, call};

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Observations per pushed report (a report must stay well under the server's body limit).
const REPORT_CHUNK: usize = 1000;

#[derive(Debug, Args, Clone)]
pub struct ConfigDir {
    /// Where the agent keeps its configuration, credential and spool
    /// [default: ~/.config/certkeeper-agent, or /etc/certkeeper-agent as root].
    #[arg(long, env = "CERTKEEPER_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

impl ConfigDir {
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.config_dir {
            return p.clone();
        }
        if is_root() {
            return PathBuf::from("/etc/certkeeper-agent");
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("certkeeper-agent")
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    false
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Enroll this host with a server.
    Enroll {
        /// Server URL, e.g. https://certkeeper.example.com:8443
        #[arg(long, env = "CERTKEEPER_SERVER")]
        server: String,
        /// Enrollment token from `certkeeper admin enrollment-token create`.
        #[arg(long, env = "CERTKEEPER_ENROLLMENT_TOKEN", hide_env_values = true)]
        token: String,
        /// SHA-256 of the server's certificate (or of its CA) to pin.
        #[arg(long, env = "CERTKEEPER_CA_FINGERPRINT")]
        ca_fingerprint: Option<String>,
        /// A CA certificate (PEM) to trust the server through.
        #[arg(long, env = "CERTKEEPER_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Name shown in the console [default: the host name].
        #[arg(long, env = "CERTKEEPER_NAME")]
        name: Option<String>,
        #[command(flatten)]
        dir: ConfigDir,
    },
    /// Configure what to scan: servers, address ranges and ports.
    Discover(DiscoverArgs),
    /// Scan everything configured and push the certificates to the server.
    Scan(ScanArgs),
    /// A vulnerability scan of endpoints, run here and printed (nothing is sent).
    Vulnscan(crate::vulnscan::VulnscanArgs),
    /// Stay running: scan on a schedule, and do the jobs the server gives this agent.
    Run {
        /// Time between scans: 30m, 6h, 1d…
        #[arg(long, default_value = "6h", value_parser = crate::admin::parse_duration, env = "CERTKEEPER_INTERVAL")]
        interval: Duration,
        /// Time between asking the server for jobs (deployments).
        #[arg(long, default_value = "30s", value_parser = crate::admin::parse_duration, env = "CERTKEEPER_POLL")]
        poll: Duration,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Do the jobs the server has for this agent now (deployments, scans, http-01
    /// tokens until their orders end), once; for cron.
    Jobs {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        dir: ConfigDir,
    },
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Server names to add (comma-separated).
    #[arg(long, env = "CERTKEEPER_SERVERS")]
    servers: Option<String>,
    /// Addresses and CIDR blocks to add (comma-separated).
    #[arg(long, env = "CERTKEEPER_IPS")]
    ips: Option<String>,
    /// Ports and ranges, e.g. "8000-9000,9443": for the targets named in this call, or
    /// for every target when none is named.
    #[arg(long, env = "CERTKEEPER_PORTS")]
    ports: Option<String>,
    /// Server names to stop scanning.
    #[arg(long, env = "CERTKEEPER_REMOVE_SERVERS")]
    remove_servers: Option<String>,
    /// Addresses and CIDR blocks to stop scanning.
    #[arg(long, env = "CERTKEEPER_REMOVE_IPS")]
    remove_ips: Option<String>,
    /// Show what is configured.
    #[arg(long, env = "CERTKEEPER_LIST")]
    list: bool,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
    #[command(flatten)]
    dir: ConfigDir,
}

#[derive(Debug, Args, Clone)]
pub struct ScanArgs {
    /// Probes in flight at once [default: agent.toml, else 256].
    #[arg(long, env = "CERTKEEPER_CONCURRENCY")]
    concurrency: Option<usize>,
    /// New connections per second, 0 for no limit [default: agent.toml, else 0].
    #[arg(long, env = "CERTKEEPER_RATE")]
    rate: Option<u32>,
    /// TCP connect timeout in milliseconds [default: 3000].
    #[arg(long, env = "CERTKEEPER_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,
    /// STARTTLS plus TLS handshake timeout in milliseconds [default: 5000].
    #[arg(long, env = "CERTKEEPER_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// Scan and print, but do not push to the server (nothing is spooled).
    #[arg(long, env = "CERTKEEPER_NO_PUSH")]
    no_push: bool,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
    #[command(flatten)]
    dir: ConfigDir,
}

/// `agent.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentConfig {
    server: Option<String>,
    agent_id: Option<String>,
    ca_fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) scan: ScanSettings,
    /// What deployments may touch on this host (nothing unless listed).
    #[serde(
        default,
        skip_serializing_if = "crate::jobs::DeploySettings::is_default"
    )]
    pub(crate) deploy: crate::jobs::DeploySettings,
    /// ACME http-01 challenges this agent answers (none unless `http01_listen` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) acme: Option<crate::jobs::AgentAcmeSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ScanSettings {
    concurrency: usize,
    rate_per_second: u32,
    connect_timeout_ms: u64,
    handshake_timeout_ms: u64,
    /// Largest address range `discover` accepts.
    max_range_addresses: u64,
    /// Retry through OpenSSL for TLS 1.0/1.1 and old suites.
    legacy_fallback: bool,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            concurrency: 256,
            rate_per_second: 0,
            connect_timeout_ms: 3000,
            handshake_timeout_ms: 5000,
            max_range_addresses: 65_536,
            legacy_fallback: true,
        }
    }
}

fn load_toml<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Write a file atomically (temp file, fsync, rename), with `mode` on Unix.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {} (disk full?)", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub async fn run(cmd: AgentCommand) -> Result<ExitCode> {
    match cmd {
        AgentCommand::Enroll {
            server,
            token,
            ca_fingerprint,
            ca_file,
            name,
            dir,
        } => enroll(&server, &token, ca_fingerprint, ca_file, name, &dir.path()).await,
        AgentCommand::Discover(args) => discover(args),
        AgentCommand::Scan(args) => scan(&args).await,
        AgentCommand::Vulnscan(args) => crate::vulnscan::run(args).await,
        AgentCommand::Run {
            interval,
            poll,
            scan: args,
        } => {
            let dir = args.dir.path();
            let responder = crate::jobs::Http01Responder::default();
            let mut next_scan = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_scan {
                    if let Err(e) = scan(&args).await {
                        eprintln!("error: {e:#}");
                    }
                    next_scan = tokio::time::Instant::now() + interval;
                }
                if let Err(e) = jobs_once(&dir, &responder).await {
                    eprintln!("error: jobs: {e:#}");
                }
                let wait =
                    poll.min(next_scan.saturating_duration_since(tokio::time::Instant::now()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        AgentCommand::Jobs { output, dir } => {
            let responder = crate::jobs::Http01Responder::default();
            let reports = jobs_once(&dir.path(), &responder).await?;
            if output == Output::Json {
                println!("{}", json!({"jobs": reports}));
            } else {
                for r in &reports {
                    let verdict = r.state.as_deref().unwrap_or("not reported");
                    let why = r
                        .error
                        .as_ref()
                        .or(r.server_error.as_ref())
                        .map(|e| {
                            format!(
                                ": {}: {}",
                                e["code"].as_str().unwrap_or(""),
                                e["message"].as_str().unwrap_or("")
                            )
                        })
                        .unwrap_or_default();
                    println!("{}  {}  {}{why}", r.id, r.kind, verdict);
                }
                if reports.is_empty() {
                    eprintln!("no jobs for this agent now");
                }
            }
            let all_done = reports
                .iter()
                .all(|r| r.state.as_deref() == Some("succeeded"));
            Ok(if all_done {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Claim and do this agent's due jobs once.
async fn jobs_once(
    dir: &Path,
    responder: &crate::jobs::Http01Responder,
) -> Result<Vec<crate::jobs::JobReport>> {
    let cfg: AgentConfig = load_toml(&dir.join("agent.toml"))?;
    crate::jobs::check_settings(&cfg.deploy)?;
    let link = link(dir, &cfg)?;
    crate::jobs::run_once(dir, &cfg, &link, responder).await
}

/// Probe limits from the `[scan]` settings.
pub(crate) fn probe_config(s: &ScanSettings) -> ProbeConfig {
    ProbeConfig {
        limiter: None,
        connect_timeout: Duration::from_millis(s.connect_timeout_ms.max(1)),
        handshake_timeout: Duration::from_millis(s.handshake_timeout_ms.max(1)),
        concurrency: s.concurrency.max(1),
        rate_per_second: Some(s.rate_per_second).filter(|r| *r > 0),
        legacy_fallback: s.legacy_fallback,
    }
}

/// Push observations made outside a scan (a deployment's rescan) through the usual
/// path: spooled first, then sent with whatever else is spooled.
pub(crate) async fn deliver(dir: &Path, link: &Link, observations: &[Observation]) -> Result<()> {
    let watch: Watchlist = load_toml(&dir.join("watchlist.toml"))?;
    let spool = dir.join("spool");
    let now = OffsetDateTime::now_utc();
    spool_reports(&spool, observations, &watch, now, now)?;
    let (_, left, _, err) = flush_spool(link, &spool).await?;
    if let Some(e) = err {
        bail!("{e} ({left} report(s) still spooled)");
    }
    Ok(())
}

/// Write observations as reports into the spool.
fn spool_reports(
    spool: &Path,
    observations: &[Observation],
    watch: &Watchlist,
    started_at: OffsetDateTime,
    finished_at: OffsetDateTime,
) -> Result<()> {
    ensure_dir(spool)?;
    let run = uuid::Uuid::new_v4();
    for (i, part) in report_chunks(observations).into_iter().enumerate() {
        let report = ScanReport {
            report_id: format!("{run}-{i}"),
            agent_version: VERSION.into(),
            hostname: hostname(),
            started_at,
            finished_at,
            watched_endpoints: u64::try_from(watch.endpoint_count()).unwrap_or(u64::MAX),
            observations: part.to_vec(),
        };
        let path = spool.join(format!("{}-{run}-{i:05}.json", started_at.unix_timestamp()));
        write_atomic(&path, &serde_json::to_vec(&report)?, 0o600)?;
    }
    Ok(())
}

async fn enroll(
    server: &str,
    token: &str,
    ca_fingerprint: Option<String>,
    ca_file: Option<PathBuf>,
    name: Option<String>,
    dir: &Path,
) -> Result<ExitCode> {
    let server = server.trim_end_matches('/').to_string();
    let trust = client::trust_from(ca_fingerprint.as_deref(), ca_file.as_deref())?;
    client::check_url(&server, &trust)?;
    let http = client::http_client(&trust, Duration::from_secs(30))?;
    let url = format!("{server}/api/v1/agents/enroll");
    let host = hostname();
    let v = call(
        http.post(&url).bearer_auth(token.trim()).json(&json!({
            "name": name.unwrap_or_else(|| host.clone()),
            "hostname": host,
            "version": VERSION,
        })),
        &url,
    )
    .await?;
    let (Some(id), Some(credential)) = (v["agent_id"].as_str(), v["credential"].as_str()) else {
        bail!("the server's answer has no agent id or credential");
    };
    ensure_dir(dir)?;
    let mut cfg: AgentConfig = load_toml(&dir.join("agent.toml"))?;
    cfg.server = Some(server.clone());
    cfg.agent_id = Some(id.to_string());
    cfg.ca_fingerprint = ca_fingerprint;
    cfg.ca_file = ca_file.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    write_atomic(&dir.join("credential"), credential.as_bytes(), 0o600)?;
    write_atomic(
        &dir.join("agent.toml"),
        toml::to_string(&cfg)?.as_bytes(),
        0o600,
    )?;
    eprintln!(
        "enrolled with {server} as agent {id}; configuration in {}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn discover(args: DiscoverArgs) -> Result<ExitCode> {
    let dir = args.dir.path();
    let cfg: AgentConfig = load_toml(&dir.join("agent.toml"))?;
    let watch_path = dir.join("watchlist.toml");
    let mut watch: Watchlist = load_toml(&watch_path)?;
    let parse_servers = |s: &Option<String>| -> Result<Vec<String>> {
        s.as_deref()
            .map(|s| {
                split_list(s)
                    .map(parse_server_name)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| crate::usage(e.to_string()))
    };
    let parse_ranges = |s: &Option<String>| -> Result<Vec<AddressRange>> {
        s.as_deref()
            .map(|s| {
                split_list(s)
                    .map(str::parse::<AddressRange>)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| crate::usage(e.to_string()))
    };
    let change = DiscoverChange {
        add_servers: parse_servers(&args.servers)?,
        add_ranges: parse_ranges(&args.ips)?,
        remove_servers: parse_servers(&args.remove_servers)?,
        remove_ranges: parse_ranges(&args.remove_ips)?,
        ports: args
            .ports
            .as_deref()
            .map(str::parse::<PortSet>)
            .transpose()
            .map_err(|e| crate::usage(e.to_string()))?,
    };
    let changes_something = !change.add_servers.is_empty()
        || !change.add_ranges.is_empty()
        || !change.remove_servers.is_empty()
        || !change.remove_ranges.is_empty()
        || change.ports.is_some();
    if !changes_something && !args.list {
        bail!(
            "nothing to do: give --servers, --ips, --ports, --remove-servers, --remove-ips or --list"
        );
    }
    if changes_something {
        watch
            .apply(&change, u128::from(cfg.scan.max_range_addresses))
            .map_err(|e| crate::usage(e.to_string()))?;
        ensure_dir(&dir)?;
        write_atomic(&watch_path, toml::to_string(&watch)?.as_bytes(), 0o600)?;
    }
    if args.output == Output::Json {
        println!(
            "{}",
            json!({
                "servers": watch.servers.iter().map(|s| json!({"name": s.name, "ports": s.ports.to_string()})).collect::<Vec<_>>(),
                "ranges": watch.ranges.iter().map(|r| json!({"range": r.range.to_string(), "ports": r.ports.to_string()})).collect::<Vec<_>>(),
                "endpoints": u64::try_from(watch.endpoint_count()).unwrap_or(u64::MAX),
            })
        );
    } else if args.list || changes_something {
        for s in &watch.servers {
            println!("server  {:<40}  ports {}", s.name, s.ports);
        }
        for r in &watch.ranges {
            println!("range   {:<40}  ports {}", r.range.to_string(), r.ports);
        }
        eprintln!("{} endpoint(s) to scan", watch.endpoint_count());
    }
    Ok(ExitCode::SUCCESS)
}

/// The agent's connection to its server.
pub(crate) struct Link {
    pub(crate) server: String,
    pub(crate) credential: String,
    pub(crate) http: reqwest::Client,
}

fn link(dir: &Path, cfg: &AgentConfig) -> Result<Link> {
    let (Some(server), Some(_)) = (&cfg.server, &cfg.agent_id) else {
        bail!(
            "this agent is not enrolled (no server in {}): run `certkeeper agent enroll` first",
            dir.join("agent.toml").display()
        );
    };
    let credential = std::fs::read_to_string(dir.join("credential"))
        .with_context(|| format!("reading {}", dir.join("credential").display()))?
        .trim()
        .to_string();
    let trust = match (&cfg.ca_fingerprint, &cfg.ca_file) {
        (Some(fp), _) => Trust::Pinned(
            fp.parse()
                .map_err(|e| anyhow::anyhow!("agent.toml ca_fingerprint: {e}"))?,
        ),
        (None, Some(f)) => Trust::CaFile(f.clone()),
        (None, None) => Trust::System,
    };
    client::check_url(server, &trust)?;
    Ok(Link {
        server: server.clone(),
        credential,
        http: client::http_client(&trust, Duration::from_secs(120))?,
    })
}

impl Link {
    async fn push(&self, body: &[u8]) -> Result<Value, ApiCallError> {
        let url = format!("{}/api/v1/reports", self.server);
        call(
            self.http
                .post(&url)
                .bearer_auth(&self.credential)
                .header("content-type", "application/json")
                .body(body.to_vec()),
            &url,
        )
        .await
    }
}

/// Send spooled reports, oldest first. Returns (sent, still spooled, server summaries,
/// first error). A report the server refuses as malformed is moved aside, not retried.
async fn flush_spool(
    link: &Link,
    spool: &Path,
) -> Result<(usize, usize, Vec<Value>, Option<String>)> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(spool) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", spool.display())),
    };
    files.sort();
    let mut sent = 0;
    let mut summaries = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        match link.push(&body).await {
            Ok(summary) => {
                std::fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
                sent += 1;
                summaries.push(summary);
            }
            Err(ApiCallError::Refused {
                status,
                code,
                message,
            }) if status == 400 || status == 413 => {
                let aside = f.with_extension("rejected");
                let _ = std::fs::rename(f, &aside);
                return Ok((
                    sent,
                    files.len() - i - 1,
                    summaries,
                    Some(format!(
                        "the server rejected {} ({code}): {message}; kept as {}",
                        f.display(),
                        aside.display()
                    )),
                ));
            }
            Err(e) => return Ok((sent, files.len() - i, summaries, Some(e.to_string()))),
        }
    }
    Ok((sent, 0, summaries, None))
}

/// Largest report body the agent builds; the server's default limit is 32 MiB.
const REPORT_BYTES: usize = 8 * 1024 * 1024;

/// Split observations into reports of at most `REPORT_CHUNK` observations and about
/// `REPORT_BYTES` bytes, so one peer with huge chains cannot get a whole batch refused.
fn report_chunks(observations: &[Observation]) -> Vec<&[Observation]> {
    if observations.is_empty() {
        return vec![&[][..]];
    }
    let size = |o: &Observation| match &o.outcome {
        // base64 grows DER by 4/3; the rest of an observation is small.
        Outcome::Tls { chain, .. } => {
            512 + chain.iter().map(|c| c.0.len() * 4 / 3 + 8).sum::<usize>()
        }
        Outcome::Failed { message, .. } => 512 + message.len(),
    };
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, o) in observations.iter().enumerate() {
        let n = size(o);
        if i > start
            && (i - start >= REPORT_CHUNK.min(MAX_OBSERVATIONS_PER_REPORT)
                || bytes + n > REPORT_BYTES)
        {
            out.push(&observations[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    out.push(&observations[start..]);
    out
}

/// Keep a presented chain within what the server accepts (the leaf and the first
/// certificates after it); the rest is dropped and said so in the summary.
fn cap_chain(o: &mut Observation) -> bool {
    if let Outcome::Tls { chain, .. } = &mut o.outcome
        && chain.len() > certkeeper_core::report::MAX_CHAIN_LEN
    {
        chain.truncate(certkeeper_core::report::MAX_CHAIN_LEN);
        return true;
    }
    false
}

/// Whether an observation is worth sending: every outcome of a named server, and
/// the peers that answered in an address range (closed ports are only counted).
fn worth_reporting(t: &Target, o: &Observation) -> bool {
    t.named
        || match &o.outcome {
            Outcome::Tls { .. } => true,
            Outcome::Failed { kind, .. } => !matches!(
                kind,
                FailureKind::Refused
                    | FailureKind::ConnectTimeout
                    | FailureKind::Network
                    | FailureKind::Dns
            ),
        }
}

async fn scan(args: &ScanArgs) -> Result<ExitCode> {
    let dir = args.dir.path();
    let cfg: AgentConfig = load_toml(&dir.join("agent.toml"))?;
    let watch: Watchlist = load_toml(&dir.join("watchlist.toml"))?;
    if watch.is_empty() {
        bail!(
            "nothing to scan: run `certkeeper agent discover --servers NAME` or `--ips CIDR` first"
        );
    }
    let link = if args.no_push {
        None
    } else {
        Some(link(&dir, &cfg)?)
    };
    let spool = dir.join("spool");
    let interactive = std::io::stderr().is_terminal();

    // Reports left from runs that could not reach the server go first.
    let mut delivery_error = None;
    let mut summaries = Vec::new();
    if let Some(l) = &link {
        let (_, left, s, err) = flush_spool(l, &spool).await?;
        summaries.extend(s);
        if let Some(e) = err {
            delivery_error = Some(format!("{e} ({left} earlier report(s) still spooled)"));
        }
    }

    let s = &cfg.scan;
    let probe_cfg = probe_config(&ScanSettings {
        connect_timeout_ms: args.connect_timeout_ms.unwrap_or(s.connect_timeout_ms),
        handshake_timeout_ms: args.handshake_timeout_ms.unwrap_or(s.handshake_timeout_ms),
        concurrency: args.concurrency.unwrap_or(s.concurrency),
        rate_per_second: args.rate.unwrap_or(s.rate_per_second),
        ..s.clone()
    });
    let started_at = OffsetDateTime::now_utc();
    let expansion = certkeeper_probe::expand(&watch).await;
    let total = expansion.len();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        if interactive {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} endpoints, {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut tried = 0u64;
    let mut tls = 0u64;
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut named_failures = Vec::new();
    let mut observations = Vec::new();
    for (name, err) in &expansion.dns_failures {
        *failures.entry(FailureKind::Dns.as_str()).or_default() += 1;
        named_failures.push(format!("{name}: cannot resolve: {err}"));
    }
    certkeeper_probe::scan(expansion.targets(), &probe_cfg, |t, o| {
        tried += 1;
        match &o.outcome {
            Outcome::Tls { .. } => tls += 1,
            Outcome::Failed { kind, message } => {
                *failures.entry(kind.as_str()).or_default() += 1;
                // A closed or filtered port of a named server is normal (not every host
                // runs every default service); a peer that answered badly is not.
                if t.named && !matches!(kind, FailureKind::Refused | FailureKind::ConnectTimeout) {
                    named_failures.push(format!("{}:{} ({}): {message}", t.host, t.port, t.ip));
                }
            }
        }
        bar.set_message(format!("{tls} with TLS"));
        bar.inc(1);
        if worth_reporting(&t, &o) {
            let mut o = o;
            if cap_chain(&mut o) {
                named_failures.push(format!(
                    "{}:{} ({}): chain longer than {} certificates, truncated",
                    t.host,
                    t.port,
                    t.ip,
                    certkeeper_core::report::MAX_CHAIN_LEN
                ));
            }
            observations.push(o);
        }
    })
    .await;
    bar.finish_and_clear();
    let finished_at = OffsetDateTime::now_utc();

    // Spool first, then send: a crash or an unreachable server loses nothing.
    let mut spooled = 0usize;
    if let Some(l) = &link {
        spool_reports(&spool, &observations, &watch, started_at, finished_at)?;
        if delivery_error.is_none() {
            let (_, left, s, err) = flush_spool(l, &spool).await?;
            summaries.extend(s);
            spooled = left;
            delivery_error = err;
        } else {
            spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
        }
    }
    let new_certificates: u64 = summaries
        .iter()
        .filter_map(|s| s["new_certificates"].as_u64())
        .sum();

    let failed = delivery_error.is_some() || !named_failures.is_empty();
    let summary = json!({
        "endpoints_tried": tried,
        "tls_found": tls,
        "new_certificates": new_certificates,
        "failures": failures,
        "reported_observations": observations.len(),
        "spooled_reports": spooled,
        "delivery_error": delivery_error,
        "observations": if args.no_push { serde_json::to_value(&observations)? } else { Value::Null },
    });
    if args.output == Output::Json {
        println!("{summary}");
    }
    if interactive || failed {
        let kinds: Vec<String> = failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "scanned {tried} endpoint(s): {tls} with TLS, {new_certificates} new certificate(s); failures: {}",
            if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(", ")
            }
        );
        for f in named_failures.iter().take(20) {
            eprintln!("  {f}");
        }
        if named_failures.len() > 20 {
            eprintln!("  … and {} more", named_failures.len() - 20);
        }
        if let Some(e) = &delivery_error {
            eprintln!("error: results not delivered: {e}");
            eprintln!(
                "{spooled} report(s) kept in {} and sent on the next run",
                spool.display()
            );
        }
    }
    Ok(if delivery_error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(chain_bytes: usize, certs: usize) -> Observation {
        Observation {
            host: "h".into(),
            ip: "192.0.2.1".parse().unwrap(),
            port: 443,
            sni: None,
            seen_at: OffsetDateTime::now_utc(),
            outcome: Outcome::Tls {
                protocol: "TLSv1.3".into(),
                cipher: "TLS_AES_128_GCM_SHA256".into(),
                starttls: None,
                chain: (0..certs)
                    .map(|_| certkeeper_core::report::DerBase64(vec![0; chain_bytes]))
                    .collect(),
            },
        }
    }

    #[test]
    fn reports_are_split_by_count_and_by_size() {
        let small: Vec<Observation> = (0..2500).map(|_| obs(1000, 2)).collect();
        let parts = report_chunks(&small);
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let big: Vec<Observation> = (0..10).map(|_| obs(60_000, 16)).collect();
        for p in report_chunks(&big) {
            let json = serde_json::to_vec(p).unwrap();
            assert!(
                json.len() <= REPORT_BYTES + 2 * 1024 * 1024,
                "{}",
                json.len()
            );
        }
        let mut long = obs(10, 40);
        assert!(cap_chain(&mut long));
        assert!(
            matches!(long.outcome, Outcome::Tls { ref chain, .. } if chain.len() == certkeeper_core::report::MAX_CHAIN_LEN)
        );
    }

    #[test]
    fn example_agent_config_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/agent.toml"
        ))
        .unwrap();
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.scan.max_range_addresses, 65_536);
        assert!(
            toml::from_str::<AgentConfig>("[scan]\nconcurency = 3").is_err(),
            "typos are errors"
        );
    }
}
