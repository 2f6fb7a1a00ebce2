//! ACME issuance with dns-01 through an operator-provided hook command.

use std::path::PathBuf;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

/// Where and how to order certificates.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// A PEM root to trust the CA's own HTTPS endpoint (test CAs such as pebble).
    pub root_ca_file: Option<PathBuf>,
    /// `mailto:` contacts for the account.
    pub contact: Vec<String>,
    /// Run as `HOOK set|clear <record name> <value>` to publish dns-01 TXT records.
    pub dns_hook: PathBuf,
    /// Longest time the hook may take.
    pub hook_timeout: Duration,
    /// Whole orders retried this many times (badNonce, rate limits, transient errors).
    pub attempts: u32,
}

/// ACME failures. Messages carry no key material.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA refused or failed (after the retries).
    #[error("the ACME CA refused or failed: {0}")]
    Ca(String),
    /// The dns-01 hook failed.
    #[error("the dns-01 hook failed: {0}")]
    Hook(String),
    /// The order ended in a state other than valid.
    #[error("the order ended as {0}")]
    Order(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Ca(e.to_string())
    }
}

async fn hook(cfg: &AcmeConfig, action: &str, name: &str, value: &str) -> Result<(), AcmeError> {
    let run = tokio::process::Command::new(&cfg.dns_hook)
        .args([action, name, value])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(cfg.hook_timeout, run)
        .await
        .map_err(|_| {
            AcmeError::Hook(format!(
                "{} did not finish in {:?}",
                cfg.dns_hook.display(),
                cfg.hook_timeout
            ))
        })?
        .map_err(|e| AcmeError::Hook(format!("{}: {e}", cfg.dns_hook.display())))?;
    if !out.status.success() {
        return Err(AcmeError::Hook(format!(
            "{} {action} exited with {}: {}",
            cfg.dns_hook.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
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
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory_url.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Ca(e.to_string()))?;
    Ok((account, Some(json)))
}

/// Order a certificate for `names` with the given CSR; returns the PEM chain (leaf
/// first) and, when an account was created, its credentials to keep.
pub async fn issue(
    cfg: &AcmeConfig,
    stored_account: Option<&str>,
    names: &[String],
    csr_der: &[u8],
) -> Result<(String, Option<String>), AcmeError> {
    let (account, created) = account(cfg, stored_account).await?;
    let mut last = None;
    for attempt in 1..=cfg.attempts.max(1) {
        match order_once(cfg, &account, names, csr_der).await {
            Ok(chain) => return Ok((chain, created)),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "ACME order failed");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| AcmeError::Order("not attempted".into())))
}

async fn order_once(
    cfg: &AcmeConfig,
    account: &Account,
    names: &[String],
    csr_der: &[u8],
) -> Result<String, AcmeError> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut published = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authz
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| AcmeError::Order("the CA offers no dns-01 challenge".into()))?;
        let name = format!(
            "_acme-challenge.{}.",
            challenge.identifier().identifier_dns()
        );
        let value = challenge.key_authorization().dns_value();
        hook(cfg, "set", &name, &value).await?;
        published.push((name, value));
        challenge.set_ready().await?;
    }
    let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retry).await;
    for (name, value) in &published {
        if let Err(e) = hook(cfg, "clear", name, value).await {
            tracing::warn!(error = %e, "could not clear a dns-01 record");
        }
    }
    let status = status?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order(format!("{status:?}")));
    }
    order.finalize_csr(csr_der).await?;
    Ok(order.poll_certificate(&retry).await?)
}

/// The DNS name of an identifier, without the wildcard label.
trait DnsName {
    fn identifier_dns(&self) -> String;
}

impl DnsName for instant_acme::AuthorizedIdentifier<'_> {
    fn identifier_dns(&self) -> String {
        match self.identifier {
            Identifier::Dns(d) => d.clone(),
            other => format!("{other:?}"),
        }
    }
}
