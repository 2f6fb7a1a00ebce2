//! `certkeeper server`: layered configuration (defaults, TOML, environment, flags),
//! then the server library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use certkeeper_server::ServerConfig;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file (flags and environment override it).
    #[arg(long, env = "CERTKEEPER_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database, certificate and admin token live [default: ./certkeeper-data].
    #[arg(long, env = "CERTKEEPER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "CERTKEEPER_LISTEN")]
    listen: Option<SocketAddr>,
    /// postgres://… to use PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "CERTKEEPER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The address stated in messages and tickets.
    #[arg(long, env = "CERTKEEPER_EXTERNAL_URL")]
    external_url: Option<String>,
    /// Serve plain HTTP (behind a TLS proxy, or on loopback).
    #[arg(long, env = "CERTKEEPER_HTTP")]
    http: bool,
}

/// The server's TOML file. Unknown keys are an error; `*_file` keys read secrets.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    external_url: Option<String>,
    http: Option<bool>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    max_report_bytes: Option<usize>,
    auth_failures_per_minute: Option<u32>,
    /// File with the key-encryption key (base64 of 32 bytes).
    kek_file: Option<PathBuf>,
    /// Earlier KEK files, during a rotation.
    #[serde(default)]
    previous_kek_files: Vec<PathBuf>,
    /// Rules for imported certificates.
    policy: Option<certkeeper_core::policy::CertificatePolicy>,
    /// An ACME CA to order from.
    acme: Option<AcmeFile>,
    /// Outbound fetches (CA-issuer certificates from AIA URLs).
    fetch: Option<FetchFile>,
    /// What a renewal does.
    renewal: Option<RenewalFile>,
    /// Limits and trust of the vulnerability scans the server runs.
    vulnscan: Option<VulnScanFile>,
    /// `[[notifications.expiry]]`, `[[notifications.report]]` and their settings.
    notifications: Option<crate::notify_cfg::NotificationsFile>,
    /// SMTP relay and default recipients.
    email: Option<toml::Table>,
    syslog: Option<crate::notify_cfg::SyslogFile>,
    /// Our signed webhook.
    webhook: Option<toml::Table>,
    /// A Slack-compatible incoming webhook.
    slack: Option<toml::Table>,
    /// PagerDuty Events v2.
    pagerduty: Option<toml::Table>,
    /// `[ticketing.servicenow]`, `[ticketing.servicedesk_plus]`, `[ticketing.jira]`, `[ticketing.rt]`.
    ticketing: Option<std::collections::BTreeMap<String, toml::Table>>,
}

/// `[fetch]` in the server TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchFile {
    /// Private, loopback or link-local ranges fetches may reach anyway.
    #[serde(default)]
    allow_private: Vec<ipnet::IpNet>,
    max_bytes: Option<usize>,
    timeout_secs: Option<u64>,
    /// PEM files of roots trusted for https fetches besides the system's (an
    /// internal CA's AIA server).
    #[serde(default)]
    ca_files: Vec<PathBuf>,
}

/// The AIA fetch rules of `[fetch]`; the `ca_files` are read now (a bad file stops
/// the start with its name).
fn fetch_policy(f: FetchFile) -> Result<certkeeper_connect::fetch::FetchPolicy> {
    let mut p = certkeeper_connect::fetch::FetchPolicy {
        allow_private: f.allow_private,
        extra_roots: certkeeper_connect::fetch::read_ca_files(&f.ca_files)
            .map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    if let Some(n) = f.max_bytes {
        p.max_bytes = n;
    }
    if let Some(t) = f.timeout_secs {
        p.timeout = std::time::Duration::from_secs(t);
    }
    Ok(p)
}

/// `[renewal]` in the server TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewalFile {
    /// Renew with the existing key instead of generating a new one.
    #[serde(default)]
    reuse_key: bool,
}

/// `[vulnscan]` in the server TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VulnScanFile {
    timeout_ms: Option<u64>,
    per_host_connections: Option<usize>,
    concurrency: Option<usize>,
    rate_per_second: Option<u32>,
    /// Trust the operating system's roots (default true).
    system_roots: Option<bool>,
    /// CA certificates (PEM files) trusted besides the system roots.
    #[serde(default)]
    ca_files: Vec<PathBuf>,
    expiring_within_days: Option<u32>,
    /// Loopback/link-local ranges the server may scan itself.
    #[serde(default)]
    allow_local: Vec<ipnet::IpNet>,
    /// Ask the leaf's OCSP responder and fetch its CRL (default true).
    online_revocation: Option<bool>,
    /// Time limit of one OCSP or CRL fetch (default 5000).
    fetch_timeout_ms: Option<u64>,
    /// Largest OCSP response or CRL accepted (default 8 MiB).
    fetch_max_bytes: Option<usize>,
    /// Private, loopback or link-local networks revocation fetches may reach
    /// (default none), e.g. ["10.0.0.0/8"].
    #[serde(default)]
    fetch_allow_private: Vec<ipnet::IpNet>,
    /// `[[vulnscan.schedule]]`: groups of endpoints scanned by themselves.
    #[serde(default)]
    schedule: Vec<ScheduleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    name: String,
    /// "daily HH:MM", "weekly mon HH:MM" or a cron expression (UTC).
    schedule: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<u16>,
}

fn vulnscan_settings(v: VulnScanFile) -> Result<certkeeper_server::vulnscans::VulnScanSettings> {
    let mut s = certkeeper_server::vulnscans::VulnScanSettings::default();
    if let Some(t) = v.timeout_ms {
        s.timeout = std::time::Duration::from_millis(t);
    }
    if let Some(n) = v.per_host_connections {
        s.per_host_connections = n.max(1);
    }
    if let Some(n) = v.concurrency {
        s.concurrency = n.max(1);
    }
    if let Some(n) = v.rate_per_second {
        s.rate_per_second = n;
    }
    if let Some(b) = v.system_roots {
        s.roots.system = b;
    }
    for f in &v.ca_files {
        let pem = std::fs::read(f)
            .with_context(|| format!("[vulnscan] ca_files: reading {}", f.display()))?;
        let ders = certkeeper_pki::pem_to_ders(&pem).with_context(|| {
            format!(
                "[vulnscan] ca_files: {} holds no PEM certificate",
                f.display()
            )
        })?;
        s.roots.extra.extend(ders);
    }
    if let Some(d) = v.expiring_within_days {
        s.expiring_within_days = d;
    }
    s.allow_local = v.allow_local;
    if let Some(b) = v.online_revocation {
        s.online_revocation = b;
    }
    if let Some(t) = v.fetch_timeout_ms {
        s.fetch.timeout = std::time::Duration::from_millis(t.max(100));
    }
    if let Some(b) = v.fetch_max_bytes {
        s.fetch.max_bytes = b.max(1024);
    }
    s.fetch.allow_private = v.fetch_allow_private;
    for sch in v.schedule {
        if sch.name.is_empty() || s.schedules.iter().any(|x| x.name == sch.name) {
            bail!(
                "[[vulnscan.schedule]]: every schedule needs a name of its own ({:?})",
                sch.name
            );
        }
        let schedule = sch
            .schedule
            .parse()
            .with_context(|| format!("[[vulnscan.schedule]] {}", sch.name))?;
        s.schedules
            .push(certkeeper_server::vulnscans::ScanSchedule {
                name: sch.name,
                schedule,
                hosts: sch.hosts,
                ports: sch.ports,
            });
    }
    Ok(s)
}

/// `[acme]` in the server TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcmeFile {
    directory_url: String,
    root_ca_file: Option<PathBuf>,
    #[serde(default)]
    contact: Vec<String>,
    /// `http-01` or `dns-01` (default: dns-01 when a DNS publisher is configured).
    challenge: Option<String>,
    /// `HOOK set|clear NAME VALUE` publishes dns-01 TXT records.
    dns_hook: Option<PathBuf>,
    #[serde(default = "default_hook_timeout")]
    hook_timeout_secs: u64,
    /// Plain-HTTP listener answering http-01 challenges (port 80 of the names).
    http01_listen: Option<SocketAddr>,
    /// How long an order whose http-01 an agent answers waits for that agent to take
    /// each job and serve the token [default 45].
    http01_agent_wait_secs: Option<u64>,
    /// External account binding: the key id, and the HMAC key (base64url) from a file
    /// or `CERTKEEPER_ACME_EAB_HMAC_KEY`.
    eab_kid: Option<String>,
    eab_hmac_key_file: Option<PathBuf>,
    #[serde(default = "default_attempts")]
    attempts: u32,
    /// dns-01 through a TSIG-signed DNS UPDATE instead of the hook.
    rfc2136: Option<Rfc2136File>,
}

/// `[acme.rfc2136]` in the server TOML.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rfc2136File {
    /// The zone's primary, `IP` or `IP:PORT` (TCP).
    server: String,
    zone: String,
    key_name: String,
    #[serde(default = "default_tsig")]
    algorithm: String,
    /// The base64 secret, or a BIND key file (`tsig-keygen`); or `CERTKEEPER_ACME_RFC2136_SECRET`.
    secret_file: Option<PathBuf>,
    #[serde(default = "default_ttl")]
    ttl: u32,
    #[serde(default = "default_dns_timeout")]
    timeout_secs: u64,
}

fn default_tsig() -> String {
    "hmac-sha256".into()
}

fn default_ttl() -> u32 {
    60
}

fn default_dns_timeout() -> u64 {
    10
}

/// The `[acme]` section as the server takes it; secrets from files or the environment.
fn acme_config(a: AcmeFile) -> Result<certkeeper_connect::acme::AcmeConfig> {
    use certkeeper_connect::acme::{AcmeConfig, ChallengeKind, DnsPublisher, ExternalAccount};
    use certkeeper_connect::rfc2136::{self, Rfc2136Config};
    let dns = match (a.dns_hook, a.rfc2136) {
        (Some(_), Some(_)) => bail!("[acme] takes dns_hook or [acme.rfc2136], not both"),
        (Some(command), None) => Some(DnsPublisher::Hook {
            command,
            timeout: std::time::Duration::from_secs(a.hook_timeout_secs),
        }),
        (None, Some(r)) => {
            let secret_text = match (
                env_secret("CERTKEEPER_ACME_RFC2136_SECRET")?,
                &r.secret_file,
            ) {
                (Some(s), _) => s,
                (None, Some(p)) => read_secret(p)?,
                (None, None) => {
                    bail!("[acme.rfc2136] needs secret_file or CERTKEEPER_ACME_RFC2136_SECRET")
                }
            };
            let server = match r.server.parse::<SocketAddr>() {
                Ok(s) => s,
                Err(_) => SocketAddr::new(
                    r.server.parse().with_context(|| {
                        format!("[acme.rfc2136] server {:?} is not IP or IP:PORT", r.server)
                    })?,
                    53,
                ),
            };
            Some(DnsPublisher::Rfc2136(Rfc2136Config {
                server,
                zone: r.zone,
                key_name: r.key_name,
                algorithm: r.algorithm.parse()?,
                secret: rfc2136::read_secret(&secret_text)?,
                ttl: r.ttl,
                timeout: std::time::Duration::from_secs(r.timeout_secs),
            }))
        }
        (None, None) => None,
    };
    let challenge = match a.challenge.as_deref() {
        Some(c) => c.parse::<ChallengeKind>().map_err(anyhow::Error::msg)?,
        None if dns.is_none() && a.http01_listen.is_some() => ChallengeKind::Http01,
        None => ChallengeKind::Dns01,
    };
    let key = match (
        env_secret("CERTKEEPER_ACME_EAB_HMAC_KEY")?,
        &a.eab_hmac_key_file,
    ) {
        (Some(k), _) => Some(k),
        (None, Some(p)) => Some(read_secret(p)?),
        (None, None) => None,
    };
    let eab = match (a.eab_kid, key) {
        (Some(kid), Some(key)) => Some(ExternalAccount {
            kid,
            hmac_key: decode_eab_key(&key)?,
        }),
        (None, None) => None,
        (Some(_), None) => {
            bail!("[acme] eab_kid needs eab_hmac_key_file or CERTKEEPER_ACME_EAB_HMAC_KEY")
        }
        (None, Some(_)) => bail!("[acme] an EAB HMAC key needs eab_kid"),
    };
    let cfg = AcmeConfig {
        directory_url: a.directory_url,
        root_ca_file: a.root_ca_file,
        contact: a.contact,
        challenge,
        dns,
        http01_listen: a.http01_listen,
        eab,
        attempts: a.attempts,
    };
    cfg.check(challenge).map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// An EAB HMAC key as CAs hand it out: base64url, with or without padding.
fn decode_eab_key(text: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let t = text.trim();
    let key = URL_SAFE_NO_PAD
        .decode(t.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(t))
        .map_err(|_| anyhow::anyhow!("the EAB HMAC key is not base64url"))?;
    if key.is_empty() {
        bail!("the EAB HMAC key is empty");
    }
    Ok(key)
}

fn default_hook_timeout() -> u64 {
    60
}

fn default_attempts() -> u32 {
    3
}

fn read_secret(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(s)
}

/// From the environment: `CERTKEEPER_X`, or the contents of the file `CERTKEEPER_X_FILE`.
fn env_secret(name: &str) -> Result<Option<String>> {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(p) if !p.is_empty() => read_secret(Path::new(&p)).map(Some),
        _ => Ok(None),
    }
}

/// Layer defaults, the TOML file, the environment and the flags into one value.
fn layered(args: &ServerArgs) -> Result<(ServerConfig, SocketAddr)> {
    let file: FileConfig = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid server configuration", p.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("certkeeper-data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
    let mut cfg = ServerConfig::new(data_dir);
    cfg.database_url = match (&args.database_url, env_secret("CERTKEEPER_DATABASE_URL")?) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(u)) => Some(u),
        (None, None) => match (file.database_url, file.database_url_file) {
            (Some(u), _) => Some(u),
            (None, Some(p)) => Some(read_secret(&p)?),
            (None, None) => None,
        },
    };
    cfg.http = args.http || file.http.unwrap_or(false);
    cfg.external_url = args.external_url.clone().or(file.external_url);
    cfg.admin_token = match env_secret("CERTKEEPER_ADMIN_TOKEN")? {
        Some(t) => Some(t),
        None => match (file.admin_token, file.admin_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(p)) => Some(read_secret(&p)?),
            (None, None) => None,
        },
    };
    if let Some(t) = &cfg.admin_token
        && t.len() < 24
    {
        bail!("the preset administrator token must be at least 24 characters");
    }
    if let Some(n) = file.max_report_bytes {
        cfg.max_report_bytes = n;
    }
    if let Some(n) = file.auth_failures_per_minute {
        cfg.auth_failures_per_minute = n;
    }
    // The KEK itself never comes from the TOML file: from the environment or a file.
    cfg.kek = env_secret("CERTKEEPER_KEK")?;
    cfg.kek_file = file.kek_file;
    cfg.previous_kek_files = file.previous_kek_files;
    if let Some(p) = file.policy {
        cfg.policy = p;
    }
    if let Some(w) = file.acme.as_ref().and_then(|a| a.http01_agent_wait_secs) {
        if !(1..=3600).contains(&w) {
            bail!("[acme] http01_agent_wait_secs must be between 1 and 3600");
        }
        cfg.http01_agent_wait = std::time::Duration::from_secs(w);
    }
    cfg.acme = file.acme.map(acme_config).transpose()?;
    if let Some(v) = file.vulnscan {
        cfg.vulnscan = vulnscan_settings(v)?;
    }
    if let Some(f) = file.fetch {
        cfg.fetch = fetch_policy(f)?;
    }
    if let Some(r) = file.renewal {
        cfg.reuse_key = r.reuse_key;
    }
    cfg.notify = crate::notify_cfg::settings(crate::notify_cfg::Sections {
        notifications: file.notifications,
        email: file.email,
        syslog: file.syslog,
        webhook: file.webhook,
        slack: file.slack,
        pagerduty: file.pagerduty,
        ticketing: file.ticketing,
    })?;
    if !listen.ip().is_unspecified() {
        cfg.tls_names.push(listen.ip().to_string());
    }
    if let Some(host) = cfg
        .external_url
        .as_deref()
        .and_then(|u| u.split("://").nth(1))
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
    {
        cfg.tls_names.push(host.to_string());
    }
    Ok((cfg, listen))
}

pub async fn run(args: ServerArgs) -> Result<ExitCode> {
    let (cfg, listen) = layered(&args)?;
    let data_dir = cfg.data_dir.clone();
    let http = cfg.http;
    let prepared = certkeeper_server::prepare(cfg)
        .await
        .context("starting the server")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let scheme = if http { "http" } else { "https" };
    eprintln!(
        "certkeeper {} serving on {scheme}://{listen}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = &prepared.created_admin_token {
        eprintln!(
            "Administrator token (shown once; also saved to {}):",
            data_dir.join("admin.token").display()
        );
        println!("{token}");
    }
    if let Some(fp) = prepared.certificate_fingerprint {
        eprintln!("Server certificate SHA-256 (agents enroll with --ca-fingerprint): {fp}");
    }
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    };
    prepared.launch(listener, shutdown).await?;
    eprintln!("certkeeper server stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_unknown_keys_are_refused() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/server.toml"
        ))
        .unwrap();
        let parsed: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed.listen, Some("127.0.0.1:8443".parse().unwrap()));
        let n = crate::notify_cfg::settings(crate::notify_cfg::Sections {
            notifications: parsed.notifications,
            email: parsed.email,
            syslog: parsed.syslog,
            webhook: parsed.webhook,
            slack: parsed.slack,
            pagerduty: parsed.pagerduty,
            ticketing: parsed.ticketing,
        })
        .unwrap();
        assert_eq!(n.policies[0].within_days, vec![30, 14, 7, 1]);
        assert_eq!(n.reports[0].name, "monthly");
        assert!(n.email.is_some() && n.syslog.is_some());
        assert!(toml::from_str::<FileConfig>("listen = \"127.0.0.1:1\"\nlisten_port = 5").is_err());
    }

    #[test]
    fn fetch_ca_files_are_read_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["aia.internal".into()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let parse = |t: &str| -> Result<certkeeper_connect::fetch::FetchPolicy> {
            let file: FileConfig = toml::from_str(t)?;
            fetch_policy(file.fetch.unwrap())
        };
        let p = parse(&format!("[fetch]\nca_files = [{ca:?}]\ntimeout_secs = 4\n")).unwrap();
        assert_eq!(p.extra_roots.len(), 1);
        assert_eq!(p.extra_roots[0].as_ref(), cert.cert.der().as_ref());
        assert_eq!(p.timeout, std::time::Duration::from_secs(4));
        assert!(parse("[fetch]\n").unwrap().extra_roots.is_empty());
        let missing = dir.path().join("missing.pem");
        let e = parse(&format!("[fetch]\nca_files = [{missing:?}]\n")).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "no certificate here").unwrap();
        let e = parse(&format!("[fetch]\nca_files = [{junk:?}]\n")).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn vulnscan_revocation_fetch_settings() {
        let v = |t: &str| -> Result<certkeeper_server::vulnscans::VulnScanSettings> {
            let file: FileConfig = toml::from_str(t)?;
            vulnscan_settings(file.vulnscan.expect("a [vulnscan] section"))
        };
        let d = v("[vulnscan]\n").unwrap();
        assert!(d.online_revocation);
        assert!(d.fetch.allow_private.is_empty());
        let s = v(
            "[vulnscan]\nonline_revocation = false\nfetch_timeout_ms = 1500\n\
                   fetch_max_bytes = 65536\nfetch_allow_private = [\"10.0.0.0/8\", \"::1/128\"]\n",
        )
        .unwrap();
        assert!(!s.online_revocation);
        assert_eq!(s.fetch.timeout, std::time::Duration::from_millis(1500));
        assert_eq!(s.fetch.max_bytes, 65536);
        assert_eq!(
            s.fetch.allow_private,
            vec![
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        assert!(v("[vulnscan]\nfetch_allow_private = [\"10.0.0.300/8\"]\n").is_err());
        assert!(v("[vulnscan]\nallow_private = []\n").is_err());
    }

    fn acme(toml_text: &str) -> Result<certkeeper_connect::acme::AcmeConfig> {
        let file: FileConfig = toml::from_str(toml_text)?;
        acme_config(file.acme.expect("an [acme] section"))
    }

    #[test]
    fn vulnscan_section_with_schedules() {
        let file: FileConfig = toml::from_str(
            "[vulnscan]\ntimeout_ms = 1500\nsystem_roots = false\n\
             [[vulnscan.schedule]]\nname = \"web\"\nschedule = \"weekly mon 02:00\"\nhosts = [\"*.example.com\"]\nports = [443]\n\
             [[vulnscan.schedule]]\nname = \"all\"\nschedule = \"30 3 * * *\"\n",
        )
        .unwrap();
        let s = vulnscan_settings(file.vulnscan.unwrap()).unwrap();
        assert_eq!(s.timeout, std::time::Duration::from_millis(1500));
        assert!(!s.roots.system);
        assert_eq!(s.schedules.len(), 2);
        assert_eq!(s.schedules[0].schedule.to_string(), "weekly mon 02:00");
        assert_eq!(s.schedules[0].hosts, ["*.example.com"]);
        for bad in [
            "[[vulnscan.schedule]]\nname = \"x\"\nschedule = \"daily 26:00\"\n",
            "[[vulnscan.schedule]]\nname = \"x\"\nschedule = \"daily 02:00\"\n[[vulnscan.schedule]]\nname = \"x\"\nschedule = \"daily 03:00\"\n",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            let e = vulnscan_settings(file.vulnscan.unwrap()).unwrap_err();
            assert!(format!("{e:#}").contains("vulnscan.schedule"), "{e:#}");
        }
    }

    #[test]
    fn acme_section_challenges_eab_and_rfc2136() {
        use certkeeper_connect::acme::{ChallengeKind, DnsPublisher};
        let dir = tempfile::tempdir().unwrap();
        let eab = dir.path().join("eab.key");
        std::fs::write(
            &eab,
            "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\n",
        )
        .unwrap();
        let tsig = dir.path().join("tsig.key");
        std::fs::write(
            &tsig,
            "key \"ck\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        let d = "directory_url = \"https://ca.test/dir\"\n";

        // http01_listen alone: http-01.
        let c = acme(&format!("[acme]\n{d}http01_listen = \"127.0.0.1:80\"\n")).unwrap();
        assert_eq!(c.challenge, ChallengeKind::Http01);
        assert!(c.dns.is_none() && c.eab.is_none());
        // A hook: dns-01 unless asked otherwise.
        let c = acme(&format!("[acme]\n{d}dns_hook = \"/bin/true\"\n")).unwrap();
        assert_eq!(c.challenge, ChallengeKind::Dns01);
        // EAB from a file; the key never shows in Debug output.
        let c = acme(&format!(
            "[acme]\n{d}dns_hook = \"/bin/true\"\neab_kid = \"kid-1\"\neab_hmac_key_file = {:?}\n",
            eab.display().to_string()
        ))
        .unwrap();
        let e = c.eab.as_ref().unwrap();
        assert_eq!(e.kid, "kid-1");
        assert_eq!(e.hmac_key.len(), 48);
        assert!(!format!("{c:?}").contains("zWNDZM6"));
        // RFC 2136 with a BIND key file and a default port.
        let c = acme(&format!(
            "[acme]\n{d}[acme.rfc2136]\nserver = \"192.0.2.53\"\nzone = \"example.com\"\nkey_name = \"ck\"\nsecret_file = {:?}\n",
            tsig.display().to_string()
        ))
        .unwrap();
        match &c.dns {
            Some(DnsPublisher::Rfc2136(r)) => {
                assert_eq!(r.server, "192.0.2.53:53".parse().unwrap());
                assert_eq!(r.secret, b"secret");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("c2VjcmV0"));

        // Each mistake is its own error.
        let err = |t: String| acme(&t).unwrap_err().to_string();
        assert!(
            err(format!(
                "[acme]\n{d}challenge = \"http-01\"\ndns_hook = \"/bin/true\"\n"
            ))
            .contains("http01_listen")
        );
        assert!(err(format!("[acme]\n{d}")).contains("dns-01 needs"));
        assert!(
            err(format!("[acme]\n{d}challenge = \"tls-alpn-01\"\n")).contains("http-01 or dns-01")
        );
        assert!(
            err(format!(
                "[acme]\n{d}dns_hook = \"/bin/true\"\neab_kid = \"k\"\n"
            ))
            .contains("eab_hmac_key_file")
        );
        assert!(err(format!(
            "[acme]\n{d}dns_hook = \"/bin/true\"\n[acme.rfc2136]\nserver = \"192.0.2.53\"\nzone = \"z\"\nkey_name = \"k\"\nsecret_file = {:?}\n",
            tsig.display().to_string()
        ))
        .contains("not both"));
        assert!(err(format!(
            "[acme]\n{d}[acme.rfc2136]\nserver = \"ns.example.com\"\nzone = \"z\"\nkey_name = \"k\"\nsecret_file = {:?}\n",
            tsig.display().to_string()
        ))
        .contains("not IP or IP:PORT"));
        assert!(err(format!(
            "[acme]\n{d}[acme.rfc2136]\nserver = \"192.0.2.53\"\nzone = \"z\"\nkey_name = \"k\"\nalgorithm = \"hmac-md5\"\nsecret_file = {:?}\n",
            tsig.display().to_string()
        ))
        .contains("TSIG algorithm"));
    }
}
