//! ACME issuance (RFC 8555): http-01 answered by the caller's token store, dns-01
//! through an operator-provided hook command or an RFC 2136 update, external account
//! binding, renewal information (ARI, RFC 9773) and job-level retries.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
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
}

impl AcmeError {
    /// Worth another whole order (the CA or the network), or not (our configuration).
    fn retryable(&self) -> bool {
        !matches!(
            self,
            AcmeError::Config(_)
                | AcmeError::Refused(_)
                | AcmeError::Dns(
                    rfc2136::Rfc2136Error::Config(_)
                        | rfc2136::Rfc2136Error::Tsig { .. }
                        | rfc2136::Rfc2136Error::Refused { .. }
                )
        )
    }
}

/// RFC 8555 §6.7 problem types that no retry cures. badNonce, rateLimited,
/// serverInternal, connection, dns and unauthorized (a challenge that failed, perhaps
/// before a record propagated) are retried.
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
    pub renewal_window: Option<(OffsetDateTime, OffsetDateTime)>,
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
    stored: Option<&str>,
) -> Result<(Account, Option<String>), AcmeError> {
    let builder = || match &cfg.root_ca_file {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
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
async fn window_of(
    account: &Account,
    der: &[u8],
) -> Result<Option<(OffsetDateTime, OffsetDateTime)>, AcmeError> {
    let Some(id) = certificate_id(der) else {
        return Ok(None);
    };
    match account.renewal_info(&id).await {
        Ok((info, _)) => Ok(Some((
            info.suggested_window.start,
            info.suggested_window.end,
        ))),
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
    let mut held: Option<Account> = None;
    let mut created = None;
    let mut last = None;
    for attempt in 1..=cfg.attempts.max(1) {
        let result = async {
            let account = match held.take() {
                Some(a) => a,
                None => {
                    let (a, c) = account(cfg, stored_account).await?;
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
        match result {
            Ok(chain_pem) => {
                let renewal_window = match (&held, leaf_der(&chain_pem)) {
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
    use rustls_pki_types::pem::PemObject;
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
