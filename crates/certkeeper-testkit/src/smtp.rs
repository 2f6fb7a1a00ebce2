//! A real SMTP server on loopback: aiosmtpd (Debian's `python3-aiosmtpd`) running
//! `smtp_sink.py`, with STARTTLS or implicit TLS under a certificate from a
//! [`TestPki`] of its own, optional AUTH PLAIN/LOGIN, and injected 451/550 answers.
//! Every accepted message is kept in a directory, with the envelope and the message
//! as Python's `email` package parses it (an independent MIME parser). Killed on drop.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{KeyKind, LeafSpec, TestPki};

/// How the server talks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkTls {
    /// Plain SMTP, no STARTTLS offered.
    #[default]
    None,
    /// STARTTLS offered and required before MAIL.
    StartTls,
    /// TLS from the first byte (submissions, port 465 style).
    Implicit,
}

/// Which reply to give instead of accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `451 4.3.0` (temporary).
    Temporary,
    /// `550 5.1.1` (permanent).
    Permanent,
}

impl Failure {
    fn code(self) -> u16 {
        match self {
            Failure::Temporary => 451,
            Failure::Permanent => 550,
        }
    }
}

/// What the server should do.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    pub tls: SinkTls,
    /// `(user, password)`: AUTH required with these.
    pub auth: Option<(String, String)>,
    /// Answer every RCPT TO with this failure.
    pub fail_rcpt: Option<Failure>,
    /// Answer DATA with this failure.
    pub fail_data: Option<Failure>,
    /// Keep each message's bytes without parsing them (headers and parts stay empty):
    /// for benchmarks, where the parse is the receiver's time.
    pub raw_only: bool,
}

/// One part of a received message, as Python's `email` package decoded it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MailPart {
    pub content_type: String,
    pub multipart: bool,
    #[serde(default)]
    pub charset: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub transfer_encoding: Option<String>,
    /// The decoded content (text; other bytes as Latin-1).
    #[serde(default)]
    pub content: String,
}

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope sender (MAIL FROM).
    pub from: String,
    /// The envelope recipients (RCPT TO).
    pub to: Vec<String>,
    /// The message exactly as it came in DATA.
    pub raw: Vec<u8>,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// Whether the session authenticated.
    pub authenticated: bool,
    /// Headers in order, values decoded (RFC 2047).
    pub headers: Vec<(String, String)>,
    /// Every MIME part, multipart containers included, in walk order.
    pub parts: Vec<MailPart>,
}

impl ReceivedMail {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first leaf part of `content_type`.
    pub fn part(&self, content_type: &str) -> Option<&MailPart> {
        self.parts
            .iter()
            .find(|p| !p.multipart && p.content_type == content_type)
    }
}

#[derive(serde::Deserialize)]
struct Record {
    from: String,
    to: Vec<String>,
    tls: bool,
    auth: bool,
    headers: Vec<(String, String)>,
    parts: Vec<MailPart>,
}

/// The running server.
pub struct SmtpSink {
    child: Child,
    port: u16,
    ca_pem: String,
    mail_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    /// Start the server on a free loopback port; returns once it answers. Its
    /// certificate names `localhost` and `127.0.0.1`.
    pub fn start(opts: &SinkOptions) -> Result<Self> {
        let pki = TestPki::new()?;
        let leaf = pki.leaf(
            &LeafSpec::new("localhost", KeyKind::EcdsaP256).names(&["localhost", "127.0.0.1"]),
        )?;
        let dir = tempfile::tempdir()?;
        let mail_dir = dir.path().join("mail");
        std::fs::create_dir(&mail_dir)?;
        let script = dir.path().join("smtp_sink.py");
        std::fs::write(&script, include_str!("smtp_sink.py"))?;
        let tls = match opts.tls {
            SinkTls::None => "none",
            SinkTls::StartTls => "starttls",
            SinkTls::Implicit => "implicit",
        };
        let mut cfg = serde_json::json!({
            "dir": mail_dir,
            "tls": tls,
            "cert": leaf.chain_path,
            "key": leaf.key_path,
            "fail_rcpt": opts.fail_rcpt.map(Failure::code),
            "fail_data": opts.fail_data.map(Failure::code),
            "raw_only": opts.raw_only,
        });
        if let Some((user, password)) = &opts.auth {
            cfg["user"] = user.as_str().into();
            cfg["password"] = password.as_str().into();
        }
        let cfg_path = dir.path().join("sink.json");
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
        // Debian's interpreter: a pyenv python3 first on PATH lacks python3-aiosmtpd.
        let python = std::env::var("CERTKEEPER_TEST_SMTP_PYTHON").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3".into()
            } else {
                "python3".into()
            }
        });
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&cfg_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the aiosmtpd sink with {python}"))?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let Ok(port) = line.trim().parse::<u16>() else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = child.kill();
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            bail!("the aiosmtpd sink did not start (apt-get install python3-aiosmtpd): {err}");
        };
        if let Err(e) = crate::wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        ) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // The server has loaded its certificate; the PKI's files may go.
        Ok(SmtpSink {
            child,
            port,
            ca_pem: pki.root.cert_pem.clone(),
            mail_dir,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM of the root CA that issued the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The messages accepted so far, oldest first.
    pub fn messages(&self) -> Result<Vec<ReceivedMail>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.mail_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|json| {
                let r: Record = serde_json::from_slice(&std::fs::read(&json)?)
                    .with_context(|| format!("reading {}", json.display()))?;
                Ok(ReceivedMail {
                    from: r.from,
                    to: r.to,
                    raw: std::fs::read(json.with_extension("eml"))?,
                    tls: r.tls,
                    authenticated: r.auth,
                    headers: r.headers,
                    parts: r.parts,
                })
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
