//! ACME issuance (RFC 8555): http-01 answered by the caller's token store, dns-01
//! through an operator-provided hook command or an RFC 2136 update, external account
//! binding, renewal information (ARI, RFC 9773) and job-level retries. A rate limit
//! (or a 429/503 answer with Retry-After) is not retried here: [`AcmeError::RetryAfter`]
//! carries the time the CA named, for the caller's scheduler.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::rfc2136::{self, Rfc2136Config};

/// Which challenge proves control of the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A file under `/.well-known/acme-challenge/` on port 80 of each name.
    Http01,
    /// A TXT record `_acme-challenge.NAME`.
    Dns01,
}

impl std::str::FromStr for ChallengeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http-01" => Ok(ChallengeKind::Http01),
            "dns-01" => Ok(ChallengeKind::Dns01),
            other => Err(format!(
                "challenge must be http-01 or dns-01, not {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// How dns-01 records are published.
#[derive(Debug, Clone)]
pub enum DnsPublisher {
    /// Run as `COMMAND set|clear <record name> <value>`.
    Hook { command: PathBuf, timeout: Duration },
    /// A TSIG-signed DNS UPDATE to the zone's primary.
    Rfc2136(Rfc2136Config),
}

/// External account binding (RFC 8555 §7.3.4): the CA's key id and HMAC key.
#[derive(Clone)]
pub struct ExternalAccount {
    pub kid: String,
    /// The raw HMAC key (the CA hands it out base64url-encoded).
    pub hmac_key: Vec<u8>,
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// Where and how to order certificates.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// A PEM root to trust the CA's own HTTPS endpoint (test CAs such as pebble).
    pub root_ca_file: Option<PathBuf>,
    /// `mailto:` contacts for the account.
    pub contact: Vec<String>,
    /// The challenge used unless a request asks for the other one.
    pub challenge: ChallengeKind,
    /// dns-01 publishing (needed for dns-01).
    pub dns: Option<DnsPublisher>,
    /// Where the server answers http-01 challenges (needed for http-01).
    pub http01_listen: Option<SocketAddr>,
    /// External account binding, when the CA requires it.
    pub eab: Option<ExternalAccount>,
    /// Whole orders retried this many times (badNonce, rate limits, transient errors).
    pub attempts: u32,
}

impl AcmeConfig {
    /// A configuration with dns-01 through a hook, as before http-01 existed.
    pub fn with_hook(directory_url: String, hook: PathBuf) -> AcmeConfig {
        AcmeConfig {
            directory_url,
            root_ca_file: None,
            contact: Vec::new(),
            challenge: ChallengeKind::Dns01,
            dns: Some(DnsPublisher::Hook {
                command: hook,
                timeout: Duration::from_secs(60),
            }),
            http01_listen: None,
            eab: None,
            attempts: 3,
        }
    }

    /// Whether `kind` can be used with this configuration; the reason if not.
    pub fn check(&self, kind: ChallengeKind) -> Result<(), String> {
        match kind {
            ChallengeKind::Http01 if self.http01_listen.is_none() => {
                Err("http-01 needs [acme] http01_listen".into())
            }
            ChallengeKind::Dns01 if self.dns.is_none() => {
                Err("dns-01 needs [acme] dns_hook or [acme.rfc2136]".into())
            }
            _ => Ok(()),
        }
    }
}

/// ACME failures. Messages carry no key material.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA refused or failed (after the retries).
    #[error("the ACME CA refused or failed: {0}")]
    Ca(String),
    /// The CA refused in a way another attempt will not change (an account that needs
    /// external account binding, a malformed request, an identifier it will not issue for).
    #[error("the ACME CA refused: {0}")]
    Refused(String),
    /// The dns-01 hook failed.
    #[error("the dns-01 hook failed: {0}")]
    Hook(String),
    /// The RFC 2136 update failed.
    #[error("the dns-01 update failed: {0}")]
    Dns(#[from] rfc2136::Rfc2136Error),
    /// The http-01 token could not be published.
    #[error("the http-01 token could not be published: {0}")]
    Http01(String),
    /// The configuration cannot do what was asked.
    #[error("{0}")]
    Config(String),
    /// The order ended in a state other than valid.
    #[error("the order ended as {0}")]
    Order(String),
    /// The CA refused for now (rate limit, or 429/503 with Retry-After) and named when
    /// to come back; no retry before `until`.
    #[error("the ACME CA asks to wait until {until}: {message}")]
    RetryAfter {
        until: OffsetDateTime,
        message: String,
    },
}

impl AcmeError {
    /// Worth another whole order (the CA or the network), or not (our configuration).
    fn retryable(&self) -> bool {
        !matches!(
            self,
            AcmeError::Config(_)
                | AcmeError::Refused(_)
                | AcmeError::RetryAfter { .. }
                | AcmeError::Dns(
                    rfc2136::Rfc2136Error::Config(_)
                        | rfc2136::Rfc2136Error::Tsig { .. }
                        | rfc2136::Rfc2136Error::Refused { .. }
                )
        )
    }
}

/// RFC 8555 §6.7 problem types that no retry cures. badNonce, serverInternal,
/// connection, dns and unauthorized (a challenge that failed, perhaps before a record
/// propagated) are retried at once; rateLimited waits for the CA's Retry-After.
const FINAL_PROBLEMS: &[&str] = &[
    "externalAccountRequired",
    "malformed",
    "badCSR",
    "badPublicKey",
    "badSignatureAlgorithm",
    "rejectedIdentifier",
    "unsupportedIdentifier",
    "invalidContact",
    "unsupportedContact",
    "userActionRequired",
    "accountDoesNotExist",
    "caa",
];

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        let final_problem = match &e {
            instant_acme::Error::Api(p) => p.r#type.as_deref().is_some_and(|t| {
                t.strip_prefix("urn:ietf:params:acme:error:")
                    .is_some_and(|t| FINAL_PROBLEMS.contains(&t))
            }),
            _ => false,
        };
        if final_problem {
            AcmeError::Refused(e.to_string())
        } else {
            AcmeError::Ca(e.to_string())
        }
    }
}

/// A boxed future, for the token store's object-safe methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where http-01 key authorizations are kept while an order is in flight; the server
/// answers `/.well-known/acme-challenge/{token}` from it.
pub trait Http01Tokens: Send + Sync {
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// One certificate to order.
pub struct OrderSpec<'a> {
    /// DNS names and IP addresses.
    pub names: &'a [String],
    pub csr_der: &'a [u8],
    pub challenge: ChallengeKind,
    /// The certificate (DER) this one replaces, for ARI's `replaces`.
    pub replaces: Option<&'a [u8]>,
}

/// What an order gave.
#[derive(Debug)]
pub struct Issued {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// Credentials (JSON) of an account created now, for the caller to keep sealed.
    pub created_account: Option<String>,
    /// The CA's suggested renewal window for the new certificate, when it offers ARI.
    pub renewal_window: Option<RenewalWindow>,
}

/// A CA's suggested renewal window (RFC 9773 §4.2) and when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    /// The answer's Retry-After, clamped to between one minute and one day (§4.3.3).
    pub next_check: OffsetDateTime,
}

async fn hook(
    command: &PathBuf,
    timeout: Duration,
    action: &str,
    name: &str,
    value: &str,
) -> Result<(), AcmeError> {
    let run = tokio::process::Command::new(command)
        .args([action, name, value])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| {
            AcmeError::Hook(format!(
                "{} did not finish in {timeout:?}",
                command.display()
            ))
        })?
        .map_err(|e| AcmeError::Hook(format!("{}: {e}", command.display())))?;
    if !out.status.success() {
        return Err(AcmeError::Hook(format!(
            "{} {action} exited with {}: {}",
            command.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Something published for a challenge, removed after the order.
enum Published {
    Txt(String, String),
    Token(String),
}

async fn publish_txt(dns: &DnsPublisher, name: &str, value: &str) -> Result<(), AcmeError> {
    match dns {
        DnsPublisher::Hook { command, timeout } => {
            hook(command, *timeout, "set", name, value).await
        }
        DnsPublisher::Rfc2136(c) => Ok(rfc2136::publish(c, name, value).await?),
    }
}

async fn withdraw(
    cfg: &AcmeConfig,
    tokens: Option<&dyn Http01Tokens>,
    item: &Published,
) -> Result<(), AcmeError> {
    match (item, &cfg.dns, tokens) {
        (Published::Txt(name, value), Some(DnsPublisher::Hook { command, timeout }), _) => {
            hook(command, *timeout, "clear", name, value).await
        }
        (Published::Txt(name, value), Some(DnsPublisher::Rfc2136(c)), _) => {
            Ok(rfc2136::remove(c, name, value).await?)
        }
        (Published::Token(t), _, Some(tokens)) => {
            tokens.withdraw(t).await.map_err(AcmeError::Http01)
        }
        _ => Ok(()),
    }
}

/// The account from stored credentials, or a new one (whose credentials, JSON, are
/// returned for the caller to keep sealed).
async fn account(
    cfg: &AcmeConfig,
    transport: &Transport,
    stored: Option<&str>,
) -> Result<(Account, Option<String>), AcmeError> {
    let builder = || Ok::<_, AcmeError>(Account::builder_with_http(Box::new(transport.clone())));
    if let Some(json) = stored {
        let creds: AccountCredentials = serde_json::from_str(json)
            .map_err(|e| AcmeError::Ca(format!("stored account unreadable: {e}")))?;
        return Ok((builder()?.from_credentials(creds).await?, None));
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let eab = cfg
        .eab
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory_url.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Ca(e.to_string()))?;
    Ok((account, Some(json)))
}

/// ARI's identifier of a certificate (authority key id and serial).
fn certificate_id(der: &[u8]) -> Option<CertificateIdentifier<'static>> {
    CertificateIdentifier::try_from(&CertificateDer::from(der))
        .ok()
        .map(CertificateIdentifier::into_owned)
}

/// The CA's suggested window for `der`: `Ok(None)` when the CA offers no ARI.
async fn window_of(account: &Account, der: &[u8]) -> Result<Option<RenewalWindow>, AcmeError> {
    let Some(id) = certificate_id(der) else {
        return Ok(None);
    };
    match account.renewal_info(&id).await {
        Ok((info, retry)) => {
            let retry = retry.clamp(Duration::from_secs(60), Duration::from_secs(86_400));
            Ok(Some(RenewalWindow {
                start: info.suggested_window.start,
                end: info.suggested_window.end,
                next_check: OffsetDateTime::now_utc() + retry,
            }))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The CA's current renewal window for `der` (a certificate it issued), asked again as
/// RFC 9773 §4.3 says: `Ok(None)` when the CA offers no ARI.
pub async fn renewal_info(
    cfg: &AcmeConfig,
    stored_account: &str,
    der: &[u8],
) -> Result<Option<RenewalWindow>, AcmeError> {
    let transport = Transport::new(cfg)?;
    let (account, _) = account(cfg, &transport, Some(stored_account)).await?;
    window_of(&account, der).await
}

/// Order a certificate; retried as a whole up to `cfg.attempts` times, since
/// instant-acme retries a badNonce only a few times per request.
pub async fn issue(
    cfg: &AcmeConfig,
    stored_account: Option<&str>,
    spec: &OrderSpec<'_>,
    tokens: Option<&dyn Http01Tokens>,
) -> Result<Issued, AcmeError> {
    // http-01 needs someone to answer: the token store given (the server's responder
    // or an agent), whatever `http01_listen` says.
    if spec.challenge == ChallengeKind::Dns01 {
        cfg.check(spec.challenge).map_err(AcmeError::Config)?;
    }
    if spec.challenge == ChallengeKind::Http01 && tokens.is_none() {
        return Err(AcmeError::Config(
            "http-01 needs the server's token store".into(),
        ));
    }
    let transport = Transport::new(cfg)?;
    let mut held: Option<Account> = None;
    let mut created = None;
    let mut last = None;
    for attempt in 1..=cfg.attempts.max(1) {
        transport.clear_failure();
        let result = async {
            let account = match held.take() {
                Some(a) => a,
                None => {
                    let (a, c) = account(cfg, &transport, stored_account).await?;
                    if c.is_some() {
                        created = c;
                    }
                    a
                }
            };
            let out = order_once(cfg, &account, spec, tokens).await;
            held = Some(account);
            out
        }
        .await;
        // A refusal that names a time (rate limit, or 429/503 with Retry-After) goes
        // back to the caller's scheduler instead of being retried now.
        let result = result.map_err(|e| transport.wait_asked(e));
        match result {
            Ok(chain_pem) => {
                let renewal_window: Option<RenewalWindow> = match (&held, leaf_der(&chain_pem)) {
                    (Some(account), Some(der)) => match window_of(account, &der).await {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::warn!(error = %e, "no renewal information from the CA");
                            None
                        }
                    },
                    _ => None,
                };
                return Ok(Issued {
                    chain_pem,
                    created_account: created,
                    renewal_window,
                });
            }
            Err(e) if !e.retryable() => return Err(e),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "ACME order failed");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| AcmeError::Order("not attempted".into())))
}

fn leaf_der(chain_pem: &str) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
}

fn identifier(name: &str) -> Identifier {
    match name.parse::<IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(name.to_string()),
    }
}

async fn order_once(
    cfg: &AcmeConfig,
    account: &Account,
    spec: &OrderSpec<'_>,
    tokens: Option<&dyn Http01Tokens>,
) -> Result<String, AcmeError> {
    let ids: Vec<Identifier> = spec.names.iter().map(|n| identifier(n)).collect();
    let mut new = NewOrder::new(&ids);
    // ARI: name the certificate this one replaces, when the CA knows ARI.
    let replaces = match spec.replaces {
        Some(old) => match window_of(account, old).await {
            Ok(Some(_)) => certificate_id(old),
            _ => None,
        },
        None => None,
    };
    if let Some(r) = replaces {
        new = new.replaces(r);
    }
    let mut order = account.new_order(&new).await?;
    let mut published = Vec::new();
    let solved = solve(cfg, &mut order, spec.challenge, tokens, &mut published).await;
    let status = match solved {
        Ok(()) => {
            let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
            order.poll_ready(&retry).await.map_err(AcmeError::from)
        }
        Err(e) => Err(e),
    };
    for item in &published {
        if let Err(e) = withdraw(cfg, tokens, item).await {
            tracing::warn!(error = %e, "could not remove a challenge response");
        }
    }
    let status = status?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order(format!("{status:?}")));
    }
    order.finalize_csr(spec.csr_der).await?;
    let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
    Ok(order.poll_certificate(&retry).await?)
}

/// Publish a response for every pending authorization and tell the CA it is ready.
async fn solve(
    cfg: &AcmeConfig,
    order: &mut instant_acme::Order,
    kind: ChallengeKind,
    tokens: Option<&dyn Http01Tokens>,
    published: &mut Vec<Published>,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let wanted = match kind {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        let what = authz.identifier().to_string();
        let mut challenge = authz.challenge(wanted).ok_or_else(|| {
            AcmeError::Order(format!("the CA offers no {kind} challenge for {what}"))
        })?;
        match kind {
            ChallengeKind::Http01 => {
                let tokens = tokens.ok_or_else(|| AcmeError::Config("no token store".into()))?;
                let token = challenge.token.clone();
                let key_auth = challenge.key_authorization();
                tokens
                    .publish(&token, key_auth.as_str())
                    .await
                    .map_err(AcmeError::Http01)?;
                published.push(Published::Token(token));
            }
            ChallengeKind::Dns01 => {
                let dns = cfg
                    .dns
                    .as_ref()
                    .ok_or_else(|| AcmeError::Config("no dns-01 publisher".into()))?;
                let Identifier::Dns(domain) = challenge.identifier().identifier else {
                    return Err(AcmeError::Config(format!(
                        "{what} is an IP address: dns-01 cannot prove it; use http-01"
                    )));
                };
                let name = format!("_acme-challenge.{domain}.");
                let value = challenge.key_authorization().dns_value();
                publish_txt(dns, &name, &value).await?;
                published.push(Published::Txt(name, value));
            }
        }
        challenge.set_ready().await?;
    }
    Ok(())
}

/// Longest wait a Retry-After may ask for; past it, the CA's answer is taken as a week.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 86_400);
/// The wait after a rateLimited problem that names no time.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// The last error answer seen: its status, problem type and Retry-After.
#[derive(Debug, Clone)]
struct Failure {
    status: u16,
    problem: Option<String>,
    retry_after: Option<OffsetDateTime>,
}

/// instant-acme's HTTP transport, through reqwest. It keeps the status, problem type
/// and Retry-After of the last error answer, which instant-acme's `Problem` drops, so
/// that a rate limit can be rescheduled at the time the CA names.
#[derive(Clone)]
struct Transport {
    client: reqwest::Client,
    last_failure: Arc<Mutex<Option<Failure>>>,
}

impl Transport {
    fn new(cfg: &AcmeConfig) -> Result<Transport, AcmeError> {
        let tls = acme_tls(cfg.root_ca_file.as_deref()).map_err(AcmeError::Config)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| AcmeError::Config(format!("ACME HTTP client: {e}")))?;
        Ok(Transport {
            client,
            last_failure: Arc::new(Mutex::new(None)),
        })
    }

    fn clear_failure(&self) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// `e`, or [`AcmeError::RetryAfter`] when the answer behind it was a rate limit or a
    /// 429/503 naming a time.
    fn wait_asked(&self, e: AcmeError) -> AcmeError {
        if !matches!(e, AcmeError::Ca(_) | AcmeError::Refused(_)) {
            return e;
        }
        let failure = self
            .last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(f) = failure else {
            return e;
        };
        let rate_limited = f.problem.as_deref() == Some("urn:ietf:params:acme:error:rateLimited");
        let until = match f.retry_after {
            Some(at) if rate_limited || f.status == 429 || f.status == 503 => at,
            None if rate_limited => OffsetDateTime::now_utc() + DEFAULT_RATE_LIMIT_WAIT,
            _ => return e,
        };
        AcmeError::RetryAfter {
            until,
            message: e.to_string(),
        }
    }
}

fn transport_error(e: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(e))
}

impl instant_acme::HttpClient for Transport {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> Pin<
        Box<dyn Future<Output = Result<instant_acme::BytesResponse, instant_acme::Error>> + Send>,
    > {
        let client = self.client.clone();
        let last = self.last_failure.clone();
        Box::pin(async move {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::wrap))
                .map_err(transport_error)?;
            let rsp = client.execute(req).await.map_err(transport_error)?;
            let status = rsp.status();
            let version = rsp.version();
            let headers = rsp.headers().clone();
            let body = rsp.bytes().await.map_err(transport_error)?;
            let failure = (!status.is_success() && !status.is_redirection()).then(|| Failure {
                status: status.as_u16(),
                problem: serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string)),
                retry_after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc())),
            });
            *last.lock().unwrap_or_else(|e| e.into_inner()) = failure;
            let mut out = http::Response::builder().status(status).version(version);
            if let Some(h) = out.headers_mut() {
                *h = headers;
            }
            let out = out
                .body(reqwest::Body::from(body))
                .map_err(transport_error)?;
            Ok(instant_acme::BytesResponse::from(out))
        })
    }
}

/// A Retry-After value (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) as a time,
/// at most [`MAX_RETRY_AFTER`] after `now`.
fn parse_retry_after(v: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let v = v.trim();
    let at = match v.parse::<u64>() {
        Ok(secs) => now + Duration::from_secs(secs.min(MAX_RETRY_AFTER.as_secs())),
        Err(_) => OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?,
    };
    Some(at.clamp(now, now + MAX_RETRY_AFTER))
}

/// TLS towards the CA: only `root` when given (a test CA such as pebble), else the
/// platform's trust store.
fn acme_tls(root: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match root {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("[acme] root_ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("[acme] root_ca_file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("[acme] root_ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "[acme] root_ca_file {} holds no certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            let verifier =
                rustls_platform_verifier::Verifier::new(provider).map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        let now = time::macros::datetime!(2026-12-02 06:00 UTC);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 07:30:00 GMT", now),
            Some(time::macros::datetime!(2026-12-02 07:30 UTC))
        );
        // A date in the past means now; an absurd wait is cut to a week.
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 07:30:00 GMT", now),
            Some(now)
        );
        assert_eq!(
            parse_retry_after("99999999999", now),
            Some(now + MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
