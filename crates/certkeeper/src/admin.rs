//! Commands that act on a server's data: `admin …` and `certs …`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::Output;
use crate::client::{self, call};

/// How to reach the server.
#[derive(Clone, Args)]
pub struct Remote {
    /// Server URL, e.g. https://certkeeper.example.com:8443
    #[arg(long, env = "CERTKEEPER_SERVER")]
    server: Option<String>,
    /// Administrator API token.
    #[arg(long, env = "CERTKEEPER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token.
    #[arg(long, env = "CERTKEEPER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Trust the server whose certificate (or CA) has this SHA-256.
    #[arg(long, env = "CERTKEEPER_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// Trust the server through this CA certificate (PEM).
    #[arg(long, env = "CERTKEEPER_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

pub(crate) struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    pub(crate) fn connect(&self) -> Result<Api> {
        let Some(base) = &self.server else {
            return Err(crate::usage(
                "no server given: use --server URL or CERTKEEPER_SERVER",
            ));
        };
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => {
                return Err(crate::usage(
                    "no token given: use --token, --token-file or CERTKEEPER_TOKEN",
                ));
            }
        };
        let trust = client::trust_from(self.ca_fingerprint.as_deref(), self.ca_file.as_deref())?;
        client::check_url(base, &trust)?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: client::http_client(&trust, Duration::from_secs(60))?,
        })
    }
}

impl Api {
    pub(crate) async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        Ok(call(
            self.http.get(&url).query(query).bearer_auth(&self.token),
            &url,
        )
        .await?)
    }
    async fn get_text(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(String, Option<String>)> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {url}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            bail!(
                "the server refused: {} ({}, HTTP {status})",
                t(&v["error"]["message"], ""),
                t(&v["error"]["code"], "http_error")
            );
        }
        let next = resp
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((resp.text().await?, next))
    }
    pub(crate) async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        Ok(call(
            self.http.put(&url).json(body).bearer_auth(&self.token),
            &url,
        )
        .await?)
    }
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        Ok(call(
            self.http.post(&url).json(body).bearer_auth(&self.token),
            &url,
        )
        .await?)
    }
    async fn post_raw(&self, path: &str, body: &Value) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .post(&url)
            .json(body)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?.to_vec();
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!(
                "the server refused: {} ({}, HTTP {status})",
                t(&v["error"]["message"], ""),
                t(&v["error"]["code"], "http_error")
            );
        }
        Ok(bytes)
    }
    async fn delete(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        Ok(call(self.http.delete(&url).bearer_auth(&self.token), &url).await?)
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Enrollment tokens for agents.
    #[command(subcommand, name = "enrollment-token")]
    EnrollmentToken(EnrollmentTokenCommand),
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Scoped API tokens: permissions and perhaps a team.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: imports and key exports.
    Audit {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentTokenCommand {
    /// Create a token an agent enrolls with.
    Create {
        /// How long the token is valid: 30m, 24h, 7d…
        #[arg(long, default_value = "24h", value_parser = parse_duration, env = "CERTKEEPER_EXPIRES_IN")]
        expires_in: Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1, env = "CERTKEEPER_USES")]
        uses: u32,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once (stdout), only its hash is kept.
    Create {
        /// A name for the token (letters, digits, - _ .), shown in the audit log.
        #[arg(long, env = "CERTKEEPER_NAME")]
        name: String,
        /// The team the token acts for (its policy, its certificates and requests).
        #[arg(long, env = "CERTKEEPER_TEAM")]
        team: Option<String>,
        /// Comma-separated: read, import, request, issue, export_key, deploy, admin.
        #[arg(
            long,
            env = "CERTKEEPER_PERMISSIONS",
            value_delimiter = ',',
            required = true
        )]
        permissions: Vec<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token by id: it stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents with host, version, last contact and how much they watch.
    List {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke an agent: its credential stops working at once.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// List certificates, soonest expiry first.
    List {
        /// Only certificates expiring within this many days (expired ones included).
        #[arg(long, env = "CERTKEEPER_EXPIRING_WITHIN")]
        expiring_within: Option<u32>,
        /// Only expired certificates.
        #[arg(long, env = "CERTKEEPER_EXPIRED")]
        expired: bool,
        /// Substring of the common name or a SAN.
        #[arg(long, env = "CERTKEEPER_Q")]
        q: Option<String>,
        /// Substring of the issuer.
        #[arg(long, env = "CERTKEEPER_ISSUER")]
        issuer: Option<String>,
        /// At most this many (default: all).
        #[arg(long, env = "CERTKEEPER_LIMIT")]
        limit: Option<usize>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: crate::ListOutput,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one certificate by SHA-256.
    Show {
        sha256: String,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set a certificate's owner and tags (notification scopes), or mark it retired
    /// (it notifies no more). Replaces what was set before.
    Label {
        sha256: String,
        #[arg(long, env = "CERTKEEPER_OWNER")]
        owner: Option<String>,
        /// Repeatable.
        #[arg(long = "tag", env = "CERTKEEPER_TAGS", value_delimiter = ',')]
        tags: Vec<String>,
        /// Retired: no longer in use, never notified about.
        #[arg(long, env = "CERTKEEPER_RETIRED")]
        retired: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `30s`, `15m`, `24h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    if secs == 0 {
        return Err("a duration must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

pub async fn run_admin(cmd: AdminCommand) -> Result<ExitCode> {
    match cmd {
        AdminCommand::EnrollmentToken(EnrollmentTokenCommand::Create {
            expires_in,
            uses,
            output,
            remote,
        }) => {
            let api = remote.connect()?;
            let v = api
                .post(
                    "/api/v1/agents/enrollment-tokens",
                    &json!({"expires_in_seconds": expires_in.as_secs(), "uses": uses}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "Enrollment token (valid until {}, {} use(s)):",
                    t(&v["expires_at"], "?"),
                    v["uses"]
                );
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        AdminCommand::Agents(AgentsCommand::List { output, remote }) => {
            let api = remote.connect()?;
            let v = api.get("/api/v1/agents", &[]).await?;
            let header = format!(
                "{:<36}  {:<20}  {:<8}  {:<20}  {:>8}  {:>8}  STATUS",
                "ID", "HOST", "VERSION", "LAST CONTACT", "WATCHES", "SEEN"
            );
            print_items(&v, output, Some(&header), |a| {
                format!(
                    "{:<36}  {:<20}  {:<8}  {:<20}  {:>8}  {:>8}  {}",
                    t(&a["id"], ""),
                    t(&a["hostname"], ""),
                    t(&a["version"], ""),
                    t(&a["last_contact"], "never"),
                    a["watched_endpoints"],
                    a["endpoints_seen"],
                    if a["revoked"] == true {
                        "revoked"
                    } else {
                        "active"
                    }
                )
            });
        }
        AdminCommand::Audit { output, remote } => {
            let api = remote.connect()?;
            let v = api.get("/api/v1/audit", &[]).await?;
            print_items(&v, output, None, |e| {
                format!(
                    "{}  {:<8}  {:<16}  {}",
                    t(&e["at"], ""),
                    t(&e["actor"], ""),
                    t(&e["action"], ""),
                    t(&e["subject"], "")
                )
            });
        }
        AdminCommand::Token(TokenCommand::Create {
            name,
            team,
            permissions,
            output,
            remote,
        }) => {
            let api = remote.connect()?;
            let v = api
                .post(
                    "/api/v1/tokens",
                    &json!({"name": name, "team": team, "permissions": permissions}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "Token {} ({}), permissions {}{}; shown only now:",
                    t(&v["name"], ""),
                    t(&v["id"], ""),
                    display(&v["permissions"]),
                    v["team"]
                        .as_str()
                        .map(|team| format!(", team {}", clean(team)))
                        .unwrap_or_default()
                );
                for w in v["warnings"].as_array().into_iter().flatten() {
                    eprintln!("warning: {}", display(w));
                }
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
        }
        AdminCommand::Token(TokenCommand::List { output, remote }) => {
            let api = remote.connect()?;
            let v = api.get("/api/v1/tokens", &[]).await?;
            let header = format!(
                "{:<36}  {:<20}  {:<12}  {:<20}  PERMISSIONS",
                "ID", "NAME", "TEAM", "CREATED"
            );
            print_items(&v, output, Some(&header), |tok| {
                format!(
                    "{:<36}  {:<20}  {:<12}  {:<20}  {}",
                    t(&tok["id"], ""),
                    t(&tok["name"], ""),
                    t(&tok["team"], "-"),
                    t(&tok["created_at"], ""),
                    display(&tok["permissions"])
                )
            });
        }
        AdminCommand::Token(TokenCommand::Revoke { id, remote }) => {
            let api = remote.connect()?;
            api.delete(&format!("/api/v1/tokens/{id}")).await?;
            eprintln!("token {id} revoked");
        }
        AdminCommand::Agents(AgentsCommand::Revoke { id, remote }) => {
            let api = remote.connect()?;
            api.delete(&format!("/api/v1/agents/{id}")).await?;
            eprintln!("agent {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_certs(cmd: CertsCommand) -> Result<ExitCode> {
    match cmd {
        CertsCommand::Label {
            sha256,
            owner,
            tags,
            retired,
            remote,
        } => {
            let api = remote.connect()?;
            let v = api
                .put(
                    &format!("/api/v1/certificates/{sha256}/meta"),
                    &json!({"owner": owner, "tags": tags, "retired": retired}),
                )
                .await?;
            println!(
                "{sha256}: owner {}, tags [{}]{}",
                v["owner"].as_str().unwrap_or("-"),
                v["tags"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                if v["retired"] == true {
                    ", retired"
                } else {
                    ""
                }
            );
        }
        CertsCommand::List {
            expiring_within,
            expired,
            q,
            issuer,
            limit,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(d) = expiring_within {
                query.push(("expiring_within_days", d.to_string()));
            }
            if expired {
                query.push(("expired", "true".into()));
            }
            if let Some(q) = q {
                query.push(("q", q));
            }
            if let Some(i) = issuer {
                query.push(("issuer", i));
            }
            if output == crate::ListOutput::Csv {
                query.push(("format", "csv".into()));
                let mut cursor: Option<String> = None;
                let mut first = true;
                loop {
                    let mut q = query.clone();
                    if let Some(c) = &cursor {
                        q.push(("cursor", c.clone()));
                    }
                    let (text, next) = api.get_text("/api/v1/certificates", &q).await?;
                    // Every page repeats the header; print it once.
                    let body = if first {
                        text.as_str()
                    } else {
                        text.split_once("\r\n").map(|x| x.1).unwrap_or("")
                    };
                    print!("{body}");
                    first = false;
                    match next {
                        Some(n) => cursor = Some(n),
                        None => break,
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut items: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = query.clone();
                q.push(("limit", "1000".into()));
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                let page = api.get("/api/v1/certificates", &q).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                if limit.is_some_and(|l| items.len() >= l) {
                    items.truncate(limit.unwrap_or(usize::MAX));
                    break;
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            if output == crate::ListOutput::Json {
                println!("{}", json!({"items": items}));
            } else {
                println!(
                    "{:<10}  {:>5}  {:<40}  {:<30}  WHERE",
                    "EXPIRES", "DAYS", "COMMON NAME", "ISSUER"
                );
                for c in &items {
                    let wher: Vec<String> = c["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| format!("{}:{}", t(&e["host"], ""), e["port"]))
                        .collect();
                    println!(
                        "{:<10}  {:>5}  {:<40}  {:<30}  {}",
                        c["not_after"]
                            .as_str()
                            .unwrap_or("")
                            .get(..10)
                            .unwrap_or(""),
                        c["days_left"],
                        t(&c["common_name"], "-"),
                        short_issuer(&t(&c["issuer"], "")),
                        wher.join(" ")
                    );
                }
                eprintln!("{} certificate(s)", items.len());
            }
        }
        CertsCommand::Show {
            sha256,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let c = api
                .get(&format!("/api/v1/certificates/{sha256}"), &[])
                .await?;
            if output == Output::Json {
                println!("{c}");
            } else {
                for key in [
                    "sha256",
                    "serial",
                    "subject",
                    "issuer",
                    "not_before",
                    "not_after",
                    "days_left",
                    "key_type",
                    "key_bits",
                    "signature_algorithm",
                    "self_signed",
                    "is_ca",
                    "managed",
                    "team",
                ] {
                    println!("{key:>20}: {}", display(&c[key]));
                }
                println!("{:>20}: {}", "sans", display(&c["sans"]));
                for e in c["endpoints"].as_array().into_iter().flatten() {
                    println!(
                        "{:>20}: {}:{} ({}) last seen {}",
                        "served at",
                        t(&e["host"], ""),
                        e["port"],
                        t(&e["ip"], ""),
                        t(&e["last_seen"], "?")
                    );
                }
                print!("{}", pem(&c["pem"]));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Text from a server answer, safe for a terminal: control characters (which a
/// hostile certificate can carry into a CN or SAN) are shown escaped, never sent raw.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A listing answer (`{"items": [...]}`): the JSON document, or a header and one line per item.
fn print_items(v: &Value, output: Output, header: Option<&str>, row: impl Fn(&Value) -> String) {
    if output == Output::Json {
        println!("{v}");
        return;
    }
    if let Some(h) = header {
        println!("{h}");
    }
    for item in v["items"].as_array().into_iter().flatten() {
        println!("{}", row(item));
    }
}

/// PEM text from an answer, printed only if it is PEM (no other control characters).
fn pem(v: &Value) -> &str {
    let s = v.as_str().unwrap_or("");
    if s.chars().all(|c| c == '\n' || c == '\r' || !c.is_control()) {
        s
    } else {
        ""
    }
}

/// A string field of a JSON answer, cleaned, or `default`.
fn t(v: &Value, default: &str) -> String {
    clean(v.as_str().unwrap_or(default))
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        Value::Array(a) => a.iter().map(display).collect::<Vec<_>>().join(", "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short_issuer(issuer: &str) -> String {
    let cn = issuer
        .split(',')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("CN="))
        .unwrap_or(issuer);
    cn.chars().take(30).collect()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
    }
}

/// `certkeeper import`: certificates (and keys) into the server's inventory.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Certificate, PEM or DER (more PEM blocks after the first are taken as chain).
    #[arg(
        long,
        conflicts_with = "pfx",
        required_unless_present = "pfx",
        env = "CERTKEEPER_CERT"
    )]
    cert: Option<PathBuf>,
    /// Private key: PEM (PKCS#1, PKCS#8, SEC1, encrypted PKCS#8 or legacy encrypted) or DER.
    #[arg(long, env = "CERTKEEPER_KEY")]
    key: Option<PathBuf>,
    /// File with the key's passphrase.
    #[arg(long, env = "CERTKEEPER_KEY_PASSWORD_FILE")]
    key_password_file: Option<PathBuf>,
    /// Intermediate certificates, leaf side first; repeat for several files.
    #[arg(long)]
    chain: Vec<PathBuf>,
    /// A PKCS#12 (.pfx/.p12) file.
    #[arg(long, env = "CERTKEEPER_PFX")]
    pfx: Option<PathBuf>,
    /// File with the PKCS#12 password.
    #[arg(long, env = "CERTKEEPER_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

/// `certkeeper export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// SHA-256 of the certificate.
    sha256: String,
    /// pem, chain, fullchain, der or pfx.
    #[arg(long, default_value = "pem", env = "CERTKEEPER_FORMAT")]
    format: String,
    /// Include the private key (audited).
    #[arg(long, env = "CERTKEEPER_WITH_KEY")]
    with_key: bool,
    /// File with the PKCS#12 password.
    #[arg(long, env = "CERTKEEPER_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long, env = "CERTKEEPER_OUT")]
    out: Option<PathBuf>,
    #[command(flatten)]
    remote: Remote,
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn read_secret_file(p: &PathBuf) -> Result<String> {
    Ok(String::from_utf8(read_file(p)?)
        .with_context(|| format!("{} is not text", p.display()))?
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

/// PEM stays text; anything else goes as base64.
fn as_text(bytes: Vec<u8>) -> String {
    use base64::Engine;
    match String::from_utf8(bytes) {
        Ok(s) if s.trim_start().starts_with("-----BEGIN") => s,
        Ok(s) => base64::engine::general_purpose::STANDARD.encode(s.as_bytes()),
        Err(e) => base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
    }
}

pub async fn run_import(args: ImportArgs) -> Result<ExitCode> {
    let api = args.remote.connect()?;
    let mut body = serde_json::Map::new();
    if let Some(p) = &args.cert {
        body.insert("certificate".into(), Value::String(as_text(read_file(p)?)));
    }
    if let Some(p) = &args.key {
        body.insert("private_key".into(), Value::String(as_text(read_file(p)?)));
    }
    if let Some(p) = &args.key_password_file {
        body.insert("key_password".into(), Value::String(read_secret_file(p)?));
    }
    if !args.chain.is_empty() {
        let chain: Vec<Value> = args
            .chain
            .iter()
            .map(|p| read_file(p).map(|b| Value::String(as_text(b))))
            .collect::<Result<_>>()?;
        body.insert("chain".into(), Value::Array(chain));
    }
    if let Some(p) = &args.pfx {
        use base64::Engine;
        body.insert(
            "pkcs12".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(read_file(p)?)),
        );
        let pw = match &args.password_file {
            Some(f) => read_secret_file(f)?,
            None => String::new(),
        };
        body.insert("pkcs12_password".into(), Value::String(pw));
    }
    let v = api
        .post("/api/v1/certificates/import", &Value::Object(body))
        .await?;
    if args.output == Output::Json {
        println!("{v}");
    } else {
        println!("{}", t(&v["sha256"], ""));
        eprintln!(
            "imported {} (valid until {}); policy {}; chain {}; key {}",
            t(&v["common_name"], "-"),
            t(&v["not_after"], "?"),
            t(&v["policy"], "?"),
            if v["chain_complete"] == true {
                "complete"
            } else {
                "incomplete"
            },
            if v["key_stored"] == true {
                "stored encrypted"
            } else {
                "not stored"
            }
        );
        for w in v["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", w.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_export(args: ExportArgs) -> Result<ExitCode> {
    let api = args.remote.connect()?;
    let password = args
        .password_file
        .as_ref()
        .map(read_secret_file)
        .transpose()?;
    let bytes = api
        .post_raw(
            &format!("/api/v1/certificates/{}/export", args.sha256),
            &json!({"format": args.format, "with_key": args.with_key, "password": password}),
        )
        .await?;
    match &args.out {
        Some(p) => {
            // A new file, the owner's only, renamed into place: an existing file's
            // looser mode is never inherited by a private key.
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            opts.open(&tmp)
                .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `certkeeper request …`: keys and CSRs made and kept by the server.
#[derive(Debug, Subcommand)]
pub enum RequestCommand {
    /// The server makes a key (kept sealed) and a CSR; prints the CSR for your CA.
    New {
        #[arg(long, env = "CERTKEEPER_CN")]
        cn: String,
        /// Subject alternative names, comma-separated.
        #[arg(long, env = "CERTKEEPER_SAN")]
        san: Option<String>,
        #[arg(long, env = "CERTKEEPER_COUNTRY")]
        country: Option<String>,
        #[arg(long, env = "CERTKEEPER_ORG")]
        org: Option<String>,
        #[arg(long, env = "CERTKEEPER_ORG_UNIT")]
        org_unit: Option<String>,
        /// rsa2048, rsa3072, rsa4096, p256, p384 or ed25519.
        #[arg(long, default_value = "rsa2048", env = "CERTKEEPER_KEY_TYPE")]
        key_type: String,
        /// Renewals of the certificate keep this key (default: a new key at each renewal).
        #[arg(long, env = "CERTKEEPER_REUSE_KEY")]
        reuse_key: bool,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Order a pending request's certificate from the server's ACME CA.
    Acme {
        id: String,
        /// http-01 or dns-01 [default: the server's `[acme] challenge`].
        #[arg(long, value_parser = ["http-01", "dns-01"])]
        challenge: Option<String>,
        /// The id of the agent on the names' host that answers http-01 (its
        /// `[acme] http01_listen`) instead of the server; implies http-01.
        #[arg(long)]
        http01_agent: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// List requests and their status.
    List {
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `certkeeper ca …`: internal CAs.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new internal root CA.
    Create {
        name: String,
        #[arg(long, env = "CERTKEEPER_CN")]
        cn: String,
        #[arg(long, default_value = "p256", env = "CERTKEEPER_KEY_TYPE")]
        key_type: String,
        /// Validity of the root, in days.
        #[arg(long, default_value_t = 3650, env = "CERTKEEPER_VALIDITY_DAYS")]
        validity_days: u32,
        /// Validity of issued certificates, in days.
        #[arg(long, default_value_t = 90, env = "CERTKEEPER_ISSUE_DAYS")]
        issue_days: u32,
        /// Names it may issue for, comma-separated (`*.corp.example` covers subdomains).
        #[arg(long, env = "CERTKEEPER_ALLOWED_NAMES")]
        allowed_names: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Issue a certificate for a pending request or a CSR file.
    Issue {
        name: String,
        #[arg(
            long,
            conflicts_with = "csr",
            required_unless_present = "csr",
            env = "CERTKEEPER_REQUEST"
        )]
        request: Option<String>,
        #[arg(long, env = "CERTKEEPER_CSR")]
        csr: Option<PathBuf>,
        #[arg(long, env = "CERTKEEPER_VALIDITY_DAYS")]
        validity_days: Option<u32>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

fn list_of(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .map(|l| {
            l.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run_request(cmd: RequestCommand) -> Result<ExitCode> {
    match cmd {
        RequestCommand::New {
            cn,
            san,
            country,
            org,
            org_unit,
            key_type,
            reuse_key,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let v = api
                .post(
                    "/api/v1/requests",
                    &json!({"common_name": cn, "sans": list_of(&san), "country": country, "organization": org,
                            "org_unit": org_unit, "key_type": key_type, "reuse_key": reuse_key}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "request {} pending; give this CSR to your CA, then `certkeeper import --cert` the result",
                    t(&v["id"], "")
                );
                print!("{}", pem(&v["csr"]));
            }
        }
        RequestCommand::Acme {
            id,
            challenge,
            http01_agent,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let mut body = json!({});
            if let Some(c) = challenge {
                body["challenge"] = json!(c);
            }
            if let Some(a) = http01_agent {
                body["http01_agent"] = json!(a);
            }
            let v = api
                .post(&format!("/api/v1/requests/{id}/acme"), &body)
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "issued {} (valid until {}, renews at {})",
                    t(&v["sha256"], ""),
                    t(&v["not_after"], ""),
                    t(&v["renewal_time"], "")
                );
                print!("{}{}", pem(&v["certificate"]), pem(&v["chain"]));
            }
        }
        RequestCommand::List { output, remote } => {
            let api = remote.connect()?;
            let v = api.get("/api/v1/requests", &[]).await?;
            print_items(&v, output, None, |r| {
                let renews = match r["renews_sha256"].as_str() {
                    Some(sha) => format!("  (renews {sha})"),
                    None => String::new(),
                };
                format!(
                    "{:<36}  {:<8}  {:<8}  {}{renews}",
                    t(&r["id"], ""),
                    t(&r["status"], ""),
                    t(&r["key_type"], ""),
                    t(&r["common_name"], "")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_ca(cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::Create {
            name,
            cn,
            key_type,
            validity_days,
            issue_days,
            allowed_names,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let v = api
                .post(
                    "/api/v1/cas",
                    &json!({"name": name, "common_name": cn, "key_type": key_type, "validity_days": validity_days,
                            "profile": {"validity_days": issue_days, "allowed_names": list_of(&allowed_names)}}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "CA {} created ({}); its certificate:",
                    name,
                    t(&v["subject"], "")
                );
                print!("{}", pem(&v["certificate"]));
            }
        }
        CaCommand::Issue {
            name,
            request,
            csr,
            validity_days,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let csr = csr.as_ref().map(read_secret_file).transpose()?;
            let v = api
                .post(
                    &format!("/api/v1/cas/{name}/issue"),
                    &json!({"request_id": request, "csr": csr, "validity_days": validity_days}),
                )
                .await?;
            if output == Output::Json {
                println!("{v}");
            } else {
                eprintln!(
                    "issued {} (valid until {}){}",
                    t(&v["sha256"], ""),
                    t(&v["not_after"], ""),
                    if v["key_stored"] == true {
                        "; the key is kept by the server"
                    } else {
                        ""
                    }
                );
                print!("{}{}", pem(&v["certificate"]), pem(&v["chain"]));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DeployCreateArgs {
    /// SHA-256 of the certificate.
    sha256: String,
    /// The agent that writes the files (`certkeeper admin agents list`).
    #[arg(long, env = "CERTKEEPER_AGENT")]
    agent: String,
    /// host:port where the new certificate must be seen served.
    #[arg(long, env = "CERTKEEPER_ENDPOINT")]
    endpoint: String,
    /// File for the certificate alone.
    #[arg(long, env = "CERTKEEPER_CERT_PATH")]
    cert_path: Option<String>,
    /// File for the chain (intermediates) alone.
    #[arg(long, env = "CERTKEEPER_CHAIN_PATH")]
    chain_path: Option<String>,
    /// File for the certificate followed by its chain.
    #[arg(long, env = "CERTKEEPER_FULLCHAIN_PATH")]
    fullchain_path: Option<String>,
    /// File for the private key (mode 0600 unless --key-mode says otherwise).
    #[arg(long, env = "CERTKEEPER_KEY_PATH")]
    key_path: Option<String>,
    /// Owner of the files (user name or uid).
    #[arg(long, env = "CERTKEEPER_OWNER")]
    owner: Option<String>,
    /// Group of the files (group name or gid).
    #[arg(long, env = "CERTKEEPER_GROUP")]
    group: Option<String>,
    /// Mode of the certificate files, octal [default: 0644].
    #[arg(long, env = "CERTKEEPER_MODE")]
    mode: Option<String>,
    /// Mode of the key file, octal [default: 0600].
    #[arg(long, env = "CERTKEEPER_KEY_MODE")]
    key_mode: Option<String>,
    /// Run after writing, e.g. "systemctl reload nginx": split on spaces, no shell;
    /// the agent runs it only if its agent.toml [deploy] allowed_commands lists it.
    #[arg(long, env = "CERTKEEPER_RELOAD")]
    reload: Option<String>,
    #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
    output: Output,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
pub enum DeployCommand {
    /// Deploy a managed certificate (one with a stored key) to files on an agent's host;
    /// done once the certificate is seen served at the endpoint.
    Create(Box<DeployCreateArgs>),
    /// Deployments with their status, attempts and last error.
    List {
        /// Only those of this certificate.
        #[arg(long, env = "CERTKEEPER_CERTIFICATE")]
        certificate: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// One deployment.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a deployment again now (after a failure), with every attempt available.
    Retry {
        id: String,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

fn deployment_line(d: &Value) -> String {
    let err = match &d["last_error"] {
        Value::Null => String::new(),
        e => format!("  {}: {}", t(&e["code"], ""), t(&e["message"], "")),
    };
    let note = d["note"]
        .as_str()
        .map(|n| format!("  ({})", clean(n)))
        .unwrap_or_default();
    format!(
        "{:<36}  {:<11}  {}/{}  {:<21}  {}{err}{note}",
        t(&d["id"], ""),
        t(&d["status"], ""),
        d["attempts"],
        d["max_attempts"],
        t(&d["endpoint"], ""),
        t(&d["certificate_sha256"], "")
            .chars()
            .take(16)
            .collect::<String>(),
    )
}

fn print_deployment(v: &Value, output: Output) {
    if output == Output::Json {
        println!("{v}");
    } else {
        println!("{}", deployment_line(v));
    }
}

pub async fn run_deploy(cmd: DeployCommand) -> Result<ExitCode> {
    match cmd {
        DeployCommand::Create(args) => {
            let DeployCreateArgs {
                sha256,
                agent,
                endpoint,
                cert_path,
                chain_path,
                fullchain_path,
                key_path,
                owner,
                group,
                mode,
                key_mode,
                reload,
                output,
                remote,
            } = *args;
            let api = remote.connect()?;
            let v = api
                .post(
                    &format!("/api/v1/certificates/{sha256}/deployments"),
                    &json!({"agent_id": agent, "endpoint": endpoint, "cert_path": cert_path, "chain_path": chain_path,
                            "fullchain_path": fullchain_path, "key_path": key_path, "owner": owner, "group": group,
                            "mode": mode, "key_mode": key_mode, "reload_command": reload}),
                )
                .await?;
            if output != Output::Json {
                eprintln!(
                    "deployment {} queued for agent {}",
                    t(&v["id"], ""),
                    t(&v["agent_id"], "")
                );
            }
            print_deployment(&v, output);
        }
        DeployCommand::List {
            certificate,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let query: Vec<(&str, String)> = certificate
                .into_iter()
                .map(|c| ("certificate", c))
                .collect();
            let v = api.get("/api/v1/deployments", &query).await?;
            print_items(&v, output, None, deployment_line);
        }
        DeployCommand::Show { id, output, remote } => {
            let api = remote.connect()?;
            let v = api.get(&format!("/api/v1/deployments/{id}"), &[]).await?;
            print_deployment(&v, output);
        }
        DeployCommand::Retry { id, output, remote } => {
            let api = remote.connect()?;
            let v = api
                .post(&format!("/api/v1/deployments/{id}/retry"), &json!({}))
                .await?;
            print_deployment(&v, output);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `certkeeper scan …`: vulnerability scans run by the server, and their findings.
#[derive(Subcommand)]
pub enum ScanCommand {
    /// Scan now: the named endpoints (every address the inventory has for each), or all.
    Now {
        /// HOST:PORT of an inventory endpoint; repeatable. None: every endpoint.
        #[arg(long = "endpoint", env = "CERTKEEPER_ENDPOINTS", value_delimiter = ',')]
        endpoints: Vec<String>,
        /// Wait until the scan is done and print its results.
        #[arg(long, env = "CERTKEEPER_WAIT")]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 1, partial results).
        #[arg(long, default_value_t = 600, env = "CERTKEEPER_WAIT_SECONDS")]
        wait_seconds: u64,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// A scan's status and results.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
    /// Findings of the inventory's endpoints (open ones unless --status says otherwise).
    Findings {
        /// HOST:PORT
        #[arg(long, env = "CERTKEEPER_ENDPOINT")]
        endpoint: Option<String>,
        /// This severity or worse: info, low, medium, high, critical.
        #[arg(long, env = "CERTKEEPER_SEVERITY")]
        severity: Option<String>,
        /// A finding kind, e.g. heartbleed, cipher_rc4, cert_expired.
        #[arg(long, env = "CERTKEEPER_KIND")]
        kind: Option<String>,
        /// open, fixed or all.
        #[arg(long, env = "CERTKEEPER_STATUS")]
        status: Option<String>,
        #[arg(long, value_enum, default_value_t, env = "CERTKEEPER_OUTPUT")]
        output: Output,
        #[command(flatten)]
        remote: Remote,
    },
}

fn print_scan(v: &Value, output: Output) {
    if output == Output::Json {
        println!("{v}");
        return;
    }
    println!(
        "scan {}: {} ({} of {} endpoints)",
        t(&v["id"], ""),
        t(&v["status"], ""),
        v["endpoints_done"],
        v["endpoints"]
    );
    for r in v["results"].as_array().into_iter().flatten() {
        println!("{}@{}:{}", t(&r["host"], ""), t(&r["ip"], ""), r["port"]);
        if let Some(e) = r["error"].as_str() {
            println!("  error: {}", clean(e));
        }
        for f in r["findings"].as_array().into_iter().flatten() {
            let new = r["new"]
                .as_array()
                .is_some_and(|n| n.iter().any(|k| k == &f["kind"]));
            println!(
                "  [{}] {}{}: {}",
                t(&f["severity"], ""),
                t(&f["title"], ""),
                if new { " (new)" } else { "" },
                t(&f["evidence"], "")
            );
        }
        for k in r["fixed"].as_array().into_iter().flatten() {
            println!("  fixed: {}", t(k, ""));
        }
    }
}

pub async fn run_scan(cmd: ScanCommand) -> Result<ExitCode> {
    match cmd {
        ScanCommand::Now {
            endpoints,
            wait,
            wait_seconds,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let v = api
                .post("/api/v1/scans", &json!({ "endpoints": endpoints }))
                .await?;
            let id = t(&v["id"], "");
            if !wait {
                if output == Output::Json {
                    println!("{v}");
                } else {
                    println!(
                        "scan {id} started over {} endpoints ({} by the server, the rest by {} agents)",
                        v["endpoints"],
                        v["by_server"],
                        v["by_agents"].as_array().map_or(0, |a| a.len())
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let until = std::time::Instant::now() + Duration::from_secs(wait_seconds);
            loop {
                let s = api.get(&format!("/api/v1/scans/{id}"), &[]).await?;
                if s["status"] != "done" && std::time::Instant::now() > until {
                    print_scan(&s, output);
                    eprintln!(
                        "error: scan {id} not done after {wait_seconds} s (agents that have not taken their jobs?)"
                    );
                    return Ok(ExitCode::FAILURE);
                }
                if s["status"] == "done" {
                    print_scan(&s, output);
                    let failed = s["results"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| !r["error"].is_null()));
                    return Ok(if failed {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ScanCommand::Show { id, output, remote } => {
            let api = remote.connect()?;
            let s = api.get(&format!("/api/v1/scans/{id}"), &[]).await?;
            print_scan(&s, output);
        }
        ScanCommand::Findings {
            endpoint,
            severity,
            kind,
            status,
            output,
            remote,
        } => {
            let api = remote.connect()?;
            let mut q = Vec::new();
            for (k, v) in [
                ("endpoint", endpoint),
                ("severity", severity),
                ("kind", kind),
                ("status", status),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let v = api.get("/api/v1/findings", &q).await?;
            print_items(&v, output, None, |f| {
                format!(
                    "{:<8}  {:<24}  {}:{} ({})  {}",
                    t(&f["severity"], ""),
                    t(&f["kind"], ""),
                    t(&f["host"], ""),
                    f["port"],
                    t(&f["ip"], ""),
                    t(&f["evidence"], "")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
