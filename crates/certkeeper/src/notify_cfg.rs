//! The server TOML's notification, channel and ticketing sections:
//! `[[notifications.expiry]]`, `[[notifications.report]]`, `[email]`, `[syslog]`,
//! `[webhook]`, `[slack]`, `[pagerduty]` and `[ticketing.<system>]`. Secrets come from
//! the environment (`CERTKEEPER_<SECTION>_<KEY>`, or a file named by
//! `CERTKEEPER_<SECTION>_<KEY>_FILE`) or from a `<key>_file` in the TOML; never
//! printed.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use certkeeper_connect::notify::{email, webhook};
use certkeeper_connect::syslog;
use certkeeper_connect::ticketing::{self, Connector, RetryPolicy};
use certkeeper_core::notify::{Channel, ExpiryPolicy, Scope};
use certkeeper_core::schedule::{Schedule, Zone};
use certkeeper_server::notify::{
    EmailSettings, NotifySettings, ReportPolicy, SyslogSettings, TicketSystem,
};
use serde::Deserialize;

/// `[notifications]`
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    #[serde(default)]
    expiry: Vec<PolicyFile>,
    #[serde(default)]
    report: Vec<ReportFile>,
    /// Attempts before a delivery or ticket action is given up (default 8).
    max_attempts: Option<u32>,
    /// First retry delay in seconds, doubling up to an hour (default 60).
    retry_base_secs: Option<u64>,
    /// The HOSTNAME of syslog messages (default: this host's name).
    hostname: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeFile {
    #[serde(default)]
    owners: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
}

impl From<ScopeFile> for Scope {
    fn from(s: ScopeFile) -> Self {
        Scope {
            owners: s.owners,
            tags: s.tags,
            issuers: s.issuers,
            names: s.names,
        }
    }
}

/// `[[notifications.expiry]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    within_days: Option<Vec<u32>>,
    /// "daily HH:MM", "weekly mon HH:MM" or a cron expression (default daily 09:00).
    schedule: Option<String>,
    /// The wall clock of the schedule: an IANA name ("Europe/Berlin") or "+02:00"; default UTC.
    timezone: Option<String>,
    /// Default: every configured channel.
    channels: Option<Vec<String>>,
    #[serde(default)]
    recipients: Vec<String>,
    escalation_days: Option<u32>,
    #[serde(default)]
    escalation_recipients: Vec<String>,
    tickets: Option<bool>,
    scope: Option<ScopeFile>,
}

/// `[[notifications.report]]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportFile {
    name: String,
    within_days: Option<u32>,
    schedule: String,
    timezone: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(default)]
    recipients: Vec<String>,
    tickets: Option<bool>,
    scope: Option<ScopeFile>,
}

/// `[syslog]`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogFile {
    /// host:port (default port 514 for udp/tcp, 6514 for tls).
    address: String,
    #[serde(default = "default_transport")]
    transport: String,
    #[serde(default = "default_facility")]
    facility: String,
    /// For TLS: the CA that signed the syslog server's certificate (PEM);
    /// default: the system roots.
    ca_file: Option<PathBuf>,
    /// For TLS: the name the server's certificate must carry (default: the host).
    server_name: Option<String>,
}

fn default_transport() -> String {
    "udp".into()
}

fn default_facility() -> String {
    "local0".into()
}

/// All sections, as read from the TOML.
#[derive(Default)]
pub struct Sections {
    pub notifications: Option<NotificationsFile>,
    pub email: Option<toml::Table>,
    pub syslog: Option<SyslogFile>,
    pub webhook: Option<toml::Table>,
    pub slack: Option<toml::Table>,
    pub pagerduty: Option<toml::Table>,
    pub ticketing: Option<BTreeMap<String, toml::Table>>,
}

fn env_secret(name: &str) -> Result<Option<String>> {
    if let Ok(v) = std::env::var(name)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(p) if !p.is_empty() => read_secret(&PathBuf::from(p)).map(Some),
        _ => Ok(None),
    }
}

fn read_secret(path: &PathBuf) -> Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let s = s.trim().to_string();
    if s.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(s)
}

/// Fill the secret keys of a section: the environment wins, then `<key>_file`,
/// then the key itself.
fn secrets(table: &mut toml::Table, env_prefix: &str, keys: &[&str]) -> Result<()> {
    for k in keys {
        let file_key = format!("{k}_file");
        let env = format!("{env_prefix}_{}", k.to_ascii_uppercase());
        let from_file = table.remove(&file_key);
        if let Some(v) = env_secret(&env)? {
            table.insert((*k).into(), toml::Value::String(v));
        } else if let Some(p) = from_file {
            let p = p
                .as_str()
                .ok_or_else(|| anyhow!("{file_key} must be a path"))?
                .to_string();
            table.insert(
                (*k).into(),
                toml::Value::String(read_secret(&PathBuf::from(p))?),
            );
        }
    }
    Ok(())
}

fn take_bool(t: &mut toml::Table, key: &str, default: bool) -> Result<bool> {
    match t.remove(key) {
        None => Ok(default),
        Some(toml::Value::Boolean(b)) => Ok(b),
        Some(_) => bail!("{key} must be true or false"),
    }
}

fn take_list(t: &mut toml::Table, key: &str) -> Result<Option<Vec<String>>> {
    match t.remove(key) {
        None => Ok(None),
        Some(toml::Value::Array(a)) => a
            .into_iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("{key} must be a list of strings"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => bail!("{key} must be a list of strings"),
    }
}

fn channels(list: Option<Vec<String>>, configured: &[Channel], what: &str) -> Result<Vec<Channel>> {
    match list {
        None => Ok(configured.to_vec()),
        Some(l) => l
            .iter()
            .map(|c| {
                let ch: Channel = c.parse().map_err(|e: String| anyhow!("{what}: {e}"))?;
                if !configured.contains(&ch) {
                    bail!(
                        "{what}: the {ch} channel has no [{}] section",
                        section_of(ch)
                    );
                }
                Ok(ch)
            })
            .collect(),
    }
}

fn section_of(ch: Channel) -> &'static str {
    match ch {
        Channel::Email => "email",
        Channel::Syslog => "syslog",
        Channel::Webhook => "webhook",
        Channel::Slack => "slack",
        Channel::PagerDuty => "pagerduty",
    }
}

fn schedule(text: Option<&str>, what: &str) -> Result<Schedule> {
    text.unwrap_or("daily 09:00")
        .parse()
        .map_err(|e| anyhow!("{what}: {e}"))
}

/// A time zone by IANA name, from the system's database (/usr/share/zoneinfo), or a
/// fixed offset.
pub fn zone(name: Option<&str>, what: &str) -> Result<Zone> {
    let Some(name) = name else {
        return Ok(Zone::utc());
    };
    if let Some(z) = Zone::parse_fixed(name) {
        return Ok(z);
    }
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.split('/').any(|p| p == ".." || p.is_empty())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if !ok {
        bail!(
            "{what}: timezone {name:?} is not a time zone name (like \"Europe/Berlin\") or an offset (like \"+02:00\")"
        );
    }
    let dir = std::env::var("TZDIR").unwrap_or_else(|_| "/usr/share/zoneinfo".into());
    let path = PathBuf::from(dir).join(name);
    let data = std::fs::read(&path)
        .with_context(|| format!("{what}: unknown timezone {name:?} (no {})", path.display()))?;
    Zone::from_tzif(name, &data).map_err(|e| anyhow!("{what}: {e}"))
}

fn syslog_settings(f: SyslogFile) -> Result<SyslogSettings> {
    let transport_name = f.transport.to_ascii_lowercase();
    let default_port = if transport_name == "tls" { 6514 } else { 514 };
    let with_port = if f
        .address
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !f.address.ends_with(']')
    {
        f.address.clone()
    } else {
        format!("{}:{default_port}", f.address)
    };
    let address: SocketAddr = with_port
        .to_socket_addrs()
        .with_context(|| format!("[syslog] address {:?} does not resolve", f.address))?
        .next()
        .ok_or_else(|| anyhow!("[syslog] address {:?} does not resolve", f.address))?;
    let host = with_port
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_default();
    let transport = match transport_name.as_str() {
        "udp" => syslog::Transport::Udp,
        "tcp" => syslog::Transport::Tcp,
        "tls" => {
            let path = match &f.ca_file {
                Some(p) => p.clone(),
                None => [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                ]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| anyhow!("[syslog] no system CA bundle found: set ca_file"))?,
            };
            let pem = std::fs::read(&path)
                .with_context(|| format!("[syslog] ca_file: reading {}", path.display()))?;
            let ders = certkeeper_pki::pem_to_ders(&pem)
                .with_context(|| format!("[syslog] {} holds no PEM certificate", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(
                ders.into_iter().map(rustls_pki_types::CertificateDer::from),
            );
            if added == 0 {
                bail!("[syslog] {} holds no usable CA certificate", path.display());
            }
            syslog::Transport::Tls {
                server_name: f.server_name.unwrap_or(host),
                roots: Arc::new(roots),
            }
        }
        other => bail!("[syslog] transport {other:?}: expected udp, tcp or tls"),
    };
    let facility = syslog::facility(&f.facility).ok_or_else(|| {
        anyhow!(
            "[syslog] facility {:?} is not a syslog facility",
            f.facility
        )
    })?;
    Ok(SyslogSettings {
        address,
        transport,
        facility,
    })
}

fn ticket_system(name: &str, mut t: toml::Table) -> Result<Option<TicketSystem>> {
    let what = format!("[ticketing.{name}]");
    if !take_bool(&mut t, "enabled", true)? {
        return Ok(None);
    }
    let create_for = take_list(&mut t, "create_for")?
        .unwrap_or_else(|| vec!["expiry".into(), "vulnerability".into()]);
    for c in &create_for {
        if c != "expiry" && c != "vulnerability" {
            bail!("{what} create_for: {c:?} is neither \"expiry\" nor \"vulnerability\"");
        }
    }
    let resolve_on_renewal = take_bool(&mut t, "resolve_on_renewal", false)?;
    let new_when_reopen_refused = take_bool(&mut t, "new_when_reopen_refused", true)?;
    let env = format!("CERTKEEPER_{}", name.to_ascii_uppercase());
    secrets(
        &mut t,
        &env,
        &["password", "technician_key", "api_token", "pat", "token"],
    )?;
    let retry = RetryPolicy::default();
    let conv = |e: toml::de::Error| anyhow!("{what}: {}", e.message());
    let connector = match name {
        "servicenow" => Connector::ServiceNow(
            ticketing::servicenow::ServiceNow::new(
                toml::Value::Table(t).try_into().map_err(conv)?,
                retry,
            )
            .map_err(|e| anyhow!("{what}: {e}"))?,
        ),
        "servicedesk_plus" => Connector::Sdp(
            ticketing::sdp::Sdp::new(toml::Value::Table(t).try_into().map_err(conv)?, retry)
                .map_err(|e| anyhow!("{what}: {e}"))?,
        ),
        "jira" => Connector::Jira(
            ticketing::jira::Jira::new(toml::Value::Table(t).try_into().map_err(conv)?, retry)
                .map_err(|e| anyhow!("{what}: {e}"))?,
        ),
        "rt" => Connector::Rt(
            ticketing::rt::Rt::new(toml::Value::Table(t).try_into().map_err(conv)?, retry)
                .map_err(|e| anyhow!("{what}: {e}"))?,
        ),
        other => {
            bail!("[ticketing.{other}]: unknown system (servicenow, servicedesk_plus, jira, rt)")
        }
    };
    Ok(Some(TicketSystem {
        connector,
        expiry: create_for.iter().any(|c| c == "expiry"),
        vulnerability: create_for.iter().any(|c| c == "vulnerability"),
        resolve_on_renewal,
        new_when_reopen_refused,
    }))
}

/// Build the notification settings from the sections.
pub fn settings(s: Sections) -> Result<NotifySettings> {
    let mut out = NotifySettings::new();
    if let Some(mut e) = s.email {
        let to = take_list(&mut e, "to")?.unwrap_or_default();
        secrets(&mut e, "CERTKEEPER_EMAIL", &["password"])?;
        let smtp: email::SmtpConfig = toml::Value::Table(e)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("[email]: {}", e.message()))?;
        out.email = Some(EmailSettings { smtp, to });
    }
    if let Some(f) = s.syslog {
        out.syslog = Some(syslog_settings(f)?);
    }
    if let Some(mut w) = s.webhook {
        secrets(&mut w, "CERTKEEPER_WEBHOOK", &["url", "secret"])?;
        out.webhook = Some(
            toml::Value::Table(w)
                .try_into::<webhook::WebhookConfig>()
                .map_err(|e| anyhow!("[webhook]: {}", e.message()))?,
        );
    }
    if let Some(mut w) = s.slack {
        secrets(&mut w, "CERTKEEPER_SLACK", &["url"])?;
        out.slack = Some(
            toml::Value::Table(w)
                .try_into::<webhook::SlackConfig>()
                .map_err(|e| anyhow!("[slack]: {}", e.message()))?,
        );
    }
    if let Some(mut w) = s.pagerduty {
        secrets(&mut w, "CERTKEEPER_PAGERDUTY", &["routing_key"])?;
        out.pagerduty = Some(
            toml::Value::Table(w)
                .try_into::<webhook::PagerDutyConfig>()
                .map_err(|e| anyhow!("[pagerduty]: {}", e.message()))?,
        );
    }
    for (name, t) in s.ticketing.unwrap_or_default() {
        if let Some(sys) = ticket_system(&name, t)? {
            out.ticketing.push(sys);
        }
    }
    let configured = out.configured_channels();
    let n = s.notifications.unwrap_or_default();
    if let Some(a) = n.max_attempts {
        out.max_attempts = a.max(1);
    }
    if let Some(b) = n.retry_base_secs {
        out.retry_base = Duration::from_secs(b.max(1));
    }
    out.hostname = n
        .hostname
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "certkeeper".into());
    let mut names = Vec::new();
    for p in n.expiry {
        let what = format!("[[notifications.expiry]] {:?}", p.name);
        if names.contains(&p.name) {
            bail!("{what}: two policies have this name");
        }
        names.push(p.name.clone());
        let policy = ExpiryPolicy {
            name: p.name,
            within_days: p.within_days.unwrap_or_else(|| vec![30, 14, 7, 1]),
            schedule: schedule(p.schedule.as_deref(), &what)?,
            zone: zone(p.timezone.as_deref(), &what)?,
            scope: p.scope.map(Scope::from).unwrap_or_default(),
            channels: channels(p.channels, &configured, &what)?,
            recipients: p.recipients,
            escalation_days: p.escalation_days.unwrap_or(7),
            escalation_recipients: p.escalation_recipients,
            tickets: p.tickets.unwrap_or(true),
        }
        .normalise();
        if policy.within_days.is_empty() {
            bail!("{what}: within_days needs at least one threshold above 0");
        }
        out.policies.push(policy);
    }
    for r in n.report {
        let what = format!("[[notifications.report]] {:?}", r.name);
        out.reports.push(ReportPolicy {
            schedule: schedule(Some(&r.schedule), &what)?,
            zone: zone(r.timezone.as_deref(), &what)?,
            within_days: r.within_days.unwrap_or(30),
            scope: r.scope.map(Scope::from).unwrap_or_default(),
            channels: channels(
                r.channels.or_else(|| Some(vec!["email".into()])),
                &configured,
                &what,
            )?,
            recipients: r.recipients,
            tickets: r.tickets.unwrap_or(true),
            name: r.name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifySettings> {
        #[derive(Deserialize)]
        struct F {
            notifications: Option<NotificationsFile>,
            email: Option<toml::Table>,
            syslog: Option<SyslogFile>,
            webhook: Option<toml::Table>,
            ticketing: Option<BTreeMap<String, toml::Table>>,
        }
        let f: F = toml::from_str(text)?;
        settings(Sections {
            notifications: f.notifications,
            email: f.email,
            syslog: f.syslog,
            webhook: f.webhook,
            ticketing: f.ticketing,
            ..Default::default()
        })
    }

    #[test]
    fn policies_channels_and_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!(
            "[email]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nfrom = \"ck@example.test\"\nto = [\"ops@example.test\"]\npassword_file = \"{}\"\n\
             [syslog]\naddress = \"127.0.0.1:5514\"\ntransport = \"tcp\"\n\
             [[notifications.expiry]]\nname = \"web\"\nwithin_days = [7, 30, 30, 0]\nschedule = \"weekly mon 08:00\"\ntimezone = \"Europe/Berlin\"\nchannels = [\"email\"]\nscope = {{ names = [\"*.example.com\"] }}\n\
             [[notifications.report]]\nname = \"monthly\"\nschedule = \"0 6 1 * *\"\nwithin_days = 60\nrecipients = [\"boss@example.test\"]\n",
            pw.display()
        );
        let s = parse(&text).unwrap();
        assert_eq!(
            s.email.as_ref().unwrap().smtp.password.as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            s.email.as_ref().unwrap().to,
            vec!["ops@example.test".to_string()]
        );
        assert_eq!(s.policies.len(), 1);
        assert_eq!(s.policies[0].within_days, vec![30, 7]);
        assert_eq!(s.policies[0].zone.to_string(), "Europe/Berlin");
        assert_eq!(s.reports[0].zone.to_string(), "UTC");
        assert_eq!(s.policies[0].channels, vec![Channel::Email]);
        assert_eq!(s.policies[0].scope.names, vec!["*.example.com".to_string()]);
        assert_eq!(s.reports[0].within_days, 60);
        assert!(!format!("{s:?}").contains("s3cret"));
        // The default policy uses every configured channel.
        let d = parse("[syslog]\naddress = \"127.0.0.1\"\n").unwrap();
        let p = d.effective_policies();
        assert_eq!(p[0].channels, vec![Channel::Syslog]);
        assert_eq!(p[0].within_days, vec![30, 14, 7, 1]);
    }

    #[test]
    fn every_ticketing_system_is_built_with_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = |name: &str, value: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, value).unwrap();
            p.display().to_string()
        };
        let text = format!(
            "[ticketing.servicenow]\nurl = \"https://sn.example.test\"\nusername = \"ck\"\npassword_file = \"{}\"\n\
             [ticketing.servicedesk_plus]\nurl = \"https://sdp.example.test:8080\"\ntechnician_key_file = \"{}\"\ncreate_for = [\"expiry\"]\n\
             [ticketing.jira]\nurl = \"https://x.atlassian.net\"\nflavour = \"cloud\"\nemail = \"pki@example.test\"\napi_token_file = \"{}\"\nproject = \"OPS\"\n\
             [ticketing.rt]\nurl = \"https://rt.example.test\"\ntoken_file = \"{}\"\nresolve_on_renewal = true\n",
            secret("sn", "sn-secret-pw"),
            secret("sdp", "sdp-secret-key"),
            secret("jira", "jira-secret-token"),
            secret("rt", "1-14-rtsecret"),
        );
        let s = parse(&text).unwrap();
        let names: Vec<&str> = s.ticketing.iter().map(|t| t.connector.system()).collect();
        assert_eq!(names, vec!["jira", "rt", "servicedesk_plus", "servicenow"]);
        let sdp = s
            .ticketing
            .iter()
            .find(|t| t.connector.system() == "servicedesk_plus")
            .unwrap();
        assert!(sdp.expiry && !sdp.vulnerability);
        assert!(
            s.ticketing
                .iter()
                .find(|t| t.connector.system() == "rt")
                .unwrap()
                .resolve_on_renewal
        );
        let debug = format!("{s:?} {:?}", s.ticketing);
        for secret in [
            "sn-secret-pw",
            "sdp-secret-key",
            "jira-secret-token",
            "1-14-rtsecret",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        let e = parse("[ticketing.servicenow]\nurl = \"https://sn.example.test\"\nusername = \"ck\"\npassword = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("[ticketing.servicenow]"), "{e}");
    }

    #[test]
    fn mistakes_are_refused_with_the_section() {
        let e =
            parse("[[notifications.expiry]]\nname = \"x\"\nchannels = [\"email\"]\n").unwrap_err();
        assert!(e.to_string().contains("no [email] section"), "{e}");
        let e =
            parse("[[notifications.expiry]]\nname = \"x\"\nschedule = \"hourly\"\n").unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        let e = parse("[syslog]\naddress = \"127.0.0.1\"\ntransport = \"carrier-pigeon\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("transport"), "{e}");
        let e = parse("[ticketing.remedy]\nurl = \"https://x\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown system"), "{e}");
        let e = parse("[ticketing.rt]\nurl = \"https://x\"\ncreate_for = [\"everything\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("create_for"), "{e}");
    }
}
