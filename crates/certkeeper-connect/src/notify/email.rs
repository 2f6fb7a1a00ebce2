//! E-mail over SMTP (contract section 6) with lettre: submission on 587 with
//! STARTTLS (RFC 6409) or on 465 with implicit TLS (RFC 8314), AUTH PLAIN or LOGIN.
//! A message is multipart/alternative (text and HTML), inside multipart/mixed when a
//! CSV attachment comes with it, UTF-8 throughout, with `Auto-Submitted:
//! auto-generated` (RFC 3834) and a stable `Message-ID` from the dedupe token so that
//! later mails thread under the first (`In-Reply-To`, `References`).
//!
//! Failures are sorted for the retry queue: SMTP 4xx, connection errors and timeouts
//! are transient; 5xx, failed authentication, bad addresses, bad configuration and
//! an untrusted server certificate are permanent. No message carries the password.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::ChannelError;

const CHANNEL: &str = "email";

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection, then STARTTLS, required (port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all (a relay on loopback); no password is sent this way.
    None,
}

/// Where and how to submit mail.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, `certkeeper@example.com` or `Certkeeper <certkeeper@example.com>`.
    pub from: String,
    /// Extra trusted CA (PEM) for a private relay, besides the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For the whole submission: connection, TLS, AUTH and the message.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_port() -> u16 {
    587
}

fn default_timeout() -> u64 {
    30
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("from", &self.from)
            .field("ca_file", &self.ca_file)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// A file sent along (the CSV of a digest).
#[derive(Debug, Clone)]
pub struct Attachment {
    pub filename: String,
    /// `text/csv; charset=utf-8`, say.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// One message. All of `to` get the same message (one SMTP transaction).
#[derive(Debug, Clone)]
pub struct Email {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    pub attachment: Option<Attachment>,
    /// Without angle brackets: `cm1-…@certkeeper.local`.
    pub message_id: String,
    /// The `Message-ID` (without angle brackets) this one follows up.
    pub in_reply_to: Option<String>,
}

/// Submit `mail` through the relay of `cfg`.
pub async fn send(cfg: &SmtpConfig, mail: &Email) -> Result<(), ChannelError> {
    let message = message(cfg, mail)?;
    let transport = transport(cfg)?;
    let result = tokio::time::timeout(timeout(cfg), transport.send(message)).await;
    transport.shutdown().await;
    match result {
        Err(_) => Err(timed_out(cfg)),
        Ok(Err(e)) => Err(classify(cfg, &e)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Connect, set up TLS and authenticate, without sending mail (for the console's
/// "test" button).
pub async fn test_connection(cfg: &SmtpConfig) -> Result<(), ChannelError> {
    let transport = transport(cfg)?;
    let result = tokio::time::timeout(timeout(cfg), transport.test_connection()).await;
    transport.shutdown().await;
    match result {
        Err(_) => Err(timed_out(cfg)),
        Ok(Err(e)) => Err(classify(cfg, &e)),
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(ChannelError::Transient {
            channel: CHANNEL,
            message: format!("{}: the server did not answer NOOP", relay(cfg)),
            retry_after: None,
        }),
    }
}

fn relay(cfg: &SmtpConfig) -> String {
    format!("SMTP relay {}:{}", cfg.host, cfg.port)
}

fn timeout(cfg: &SmtpConfig) -> Duration {
    Duration::from_secs(cfg.timeout_secs.max(1))
}

fn permanent(message: String) -> ChannelError {
    ChannelError::Permanent {
        channel: CHANNEL,
        message,
    }
}

fn timed_out(cfg: &SmtpConfig) -> ChannelError {
    ChannelError::Transient {
        channel: CHANNEL,
        message: format!(
            "{}: no complete answer within {} s",
            relay(cfg),
            timeout(cfg).as_secs()
        ),
        retry_after: None,
    }
}

fn mailbox(what: &str, addr: &str) -> Result<Mailbox, ChannelError> {
    addr.parse::<Mailbox>()
        .map_err(|e| permanent(format!("{what} address {addr:?} is not valid: {e}")))
}

/// A message ID as given (no angle brackets): `local@domain`, printable ASCII.
fn msg_id(what: &str, id: &str) -> Result<String, ChannelError> {
    let ok = id.split_once('@').is_some_and(|(l, d)| {
        !l.is_empty()
            && !d.is_empty()
            && !d.contains('@')
            && id
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\'))
    });
    if ok {
        Ok(format!("<{id}>"))
    } else {
        Err(permanent(format!(
            "{what} {id:?} is not a message ID (local@domain, without angle brackets)"
        )))
    }
}

fn message(cfg: &SmtpConfig, mail: &Email) -> Result<Message, ChannelError> {
    if mail.to.is_empty() {
        return Err(permanent("a message needs at least one recipient".into()));
    }
    let mut b = Message::builder()
        .from(mailbox("the sender", &cfg.from)?)
        .subject(mail.subject.as_str())
        .date(SystemTime::now())
        .message_id(Some(msg_id("message_id", &mail.message_id)?))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
    for to in &mail.to {
        b = b.to(mailbox("the recipient", to)?);
    }
    if let Some(parent) = &mail.in_reply_to {
        let parent = msg_id("in_reply_to", parent)?;
        b = b.in_reply_to(parent.clone()).references(parent);
    }
    let text = SinglePart::plain(mail.text.clone());
    let alternative = |html: &String| {
        MultiPart::alternative()
            .singlepart(text.clone())
            .singlepart(SinglePart::html(html.clone()))
    };
    let built = match (&mail.html, &mail.attachment) {
        (None, None) => b.singlepart(text.clone()),
        (Some(html), None) => b.multipart(alternative(html)),
        (None, Some(a)) => b.multipart(
            MultiPart::mixed()
                .singlepart(text.clone())
                .singlepart(attachment(a)?),
        ),
        (Some(html), Some(a)) => b.multipart(
            MultiPart::mixed()
                .multipart(alternative(html))
                .singlepart(attachment(a)?),
        ),
    };
    built.map_err(|e| permanent(format!("cannot build the message: {e}")))
}

fn attachment(a: &Attachment) -> Result<SinglePart, ChannelError> {
    let ct = ContentType::parse(&a.content_type).map_err(|e| {
        permanent(format!(
            "attachment content type {:?} is not valid: {e}",
            a.content_type
        ))
    })?;
    Ok(lettre::message::Attachment::new(a.filename.clone()).body(a.bytes.clone(), ct))
}

fn transport(cfg: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, ChannelError> {
    if cfg.host.trim().is_empty() {
        return Err(permanent("the SMTP host is empty".into()));
    }
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
        .port(cfg.port)
        .timeout(Some(timeout(cfg)));
    b = match cfg.tls {
        SmtpTls::None => b.tls(Tls::None),
        SmtpTls::StartTls => b.tls(Tls::Required(tls_parameters(cfg)?)),
        SmtpTls::Implicit => b.tls(Tls::Wrapper(tls_parameters(cfg)?)),
    };
    match (&cfg.username, &cfg.password) {
        (None, None) => {}
        (Some(user), Some(password)) => {
            if cfg.tls == SmtpTls::None {
                return Err(permanent(format!(
                    "{}: a password is never sent without TLS (tls = \"none\" with a username)",
                    relay(cfg)
                )));
            }
            b = b
                .credentials(Credentials::new(user.clone(), password.clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        (Some(_), None) => return Err(permanent("a username is set but no password".into())),
        (None, Some(_)) => return Err(permanent("a password is set but no username".into())),
    }
    Ok(b.build())
}

fn tls_parameters(cfg: &SmtpConfig) -> Result<TlsParameters, ChannelError> {
    let mut b = TlsParameters::builder(cfg.host.clone());
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| permanent(format!("cannot read ca_file {}: {e}", path.display())))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(permanent(format!(
                "ca_file {} holds no PEM certificate",
                path.display()
            )));
        }
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            permanent(format!(
                "ca_file {} holds no usable PEM certificate: {e}",
                path.display()
            ))
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls()
        .map_err(|e| permanent(format!("TLS setup for {} failed: {e}", relay(cfg))))
}

/// Sort a lettre error into transient or permanent, with a message that names the
/// relay and the cause but never the password.
fn classify(cfg: &SmtpConfig, e: &lettre::transport::smtp::Error) -> ChannelError {
    let detail = scrub(cfg, &chain(e));
    let relay = relay(cfg);
    if let Some(tls) = tls_cause(e) {
        // An untrusted or mismatched certificate stays so until someone acts.
        return permanent(scrub(
            cfg,
            &format!(
                "{relay}: TLS failed: {tls} (is the relay's CA trusted? set ca_file for a private one)"
            ),
        ));
    }
    if let Some(code) = e.status() {
        let code = code.to_string();
        let what = if code.starts_with("53") || code == "454" {
            "authentication failed"
        } else {
            "the server refused"
        };
        let message = format!("{relay}: {what}: {detail}");
        if e.is_transient() {
            return ChannelError::Transient {
                channel: CHANNEL,
                message,
                retry_after: None,
            };
        }
        return permanent(message);
    }
    if e.is_timeout() {
        return timed_out(cfg);
    }
    if e.is_client() || e.is_tls() {
        return permanent(format!("{relay}: {detail}"));
    }
    // Connection, network, unparsable answers, a shut-down transport.
    ChannelError::Transient {
        channel: CHANNEL,
        message: format!("{relay}: {detail}"),
        retry_after: None,
    }
}

/// The rustls error somewhere in the chain of `e`, if TLS is what failed.
fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r.to_string());
        }
        cur = c.source();
    }
    None
}

/// `e` with its sources, each once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// The message without the password, should a server echo it.
fn scrub(cfg: &SmtpConfig, s: &str) -> String {
    match cfg.password.as_deref() {
        Some(p) if !p.is_empty() => s.replace(p, "***"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SmtpConfig {
        serde_json::from_value(serde_json::json!({
            "host": "smtp.example.com",
            "from": "certkeeper@example.com",
            "username": "ck",
            "password": "hunter2-very-secret",
        }))
        .unwrap()
    }

    #[test]
    fn defaults_apply_and_debug_hides_the_password() {
        let c = cfg();
        assert_eq!(
            (c.port, c.tls, c.timeout_secs),
            (587, SmtpTls::StartTls, 30)
        );
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("***"), "{d}");
        let t: SmtpTls = serde_json::from_str("\"implicit\"").unwrap();
        assert_eq!(t, SmtpTls::Implicit);
        assert!(serde_json::from_str::<SmtpTls>("\"tls\"").is_err());
        let unknown = serde_json::from_value::<SmtpConfig>(serde_json::json!({
            "host": "h", "from": "a@b.c", "pasword": "x"
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn bad_input_is_permanent_and_clear() {
        let mut c = cfg();
        c.tls = SmtpTls::None;
        let e = transport(&c).unwrap_err();
        assert!(!e.is_transient());
        assert!(e.to_string().contains("never sent without TLS"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let mail = Email {
            to: vec!["not an address".into()],
            subject: "s".into(),
            text: "t".into(),
            html: None,
            attachment: None,
            message_id: "cm1-ab@certkeeper.local".into(),
            in_reply_to: None,
        };
        let e = message(&cfg(), &mail).unwrap_err();
        assert!(e.to_string().contains("\"not an address\""), "{e}");
        let mail = Email {
            to: vec!["a@example.com".into()],
            message_id: "<cm1-ab@certkeeper.local>".into(),
            ..mail
        };
        let e = message(&cfg(), &mail).unwrap_err();
        assert!(e.to_string().contains("without angle brackets"), "{e}");
    }
}
