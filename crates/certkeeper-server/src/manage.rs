//! Import and export of managed certificates, and the audit log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certkeeper_connect::acme::{AcmeError, ChallengeKind, RenewalWindow};
use certkeeper_core::Fingerprint;
use certkeeper_pki::import::{self, ImportError, ImportInput};
use certkeeper_pki::vault::SealedKey;
use certkeeper_store::{ParsedCert, StoredKey};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use certkeeper_core::access::Permission;

use crate::auth::{Admin, Caller, team_check};
use crate::error::ApiError;
use crate::{AppState, views};

/// PEM text as is; anything else is taken as base64 of DER.
fn blob(s: &str, what: &str) -> Result<Vec<u8>, ApiError> {
    let t = s.trim();
    if t.starts_with("-----BEGIN") {
        return Ok(t.as_bytes().to_vec());
    }
    base64::engine::general_purpose::STANDARD
        .decode(t.split_whitespace().collect::<String>())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                format!("{what} is neither PEM nor base64 DER"),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    certificate: Option<String>,
    #[serde(default)]
    chain: Vec<String>,
    private_key: Option<String>,
    key_password: Option<String>,
    pkcs12: Option<String>,
    pkcs12_password: Option<String>,
}

fn import_error(e: ImportError) -> ApiError {
    ApiError::bad_request(e.code(), e.to_string())
}

fn parsed(der: &[u8]) -> Result<ParsedCert, ApiError> {
    certkeeper_pki::parse_der(der)
        .map(|facts| ParsedCert {
            facts,
            der: der.to_vec(),
        })
        .map_err(|e| ApiError::bad_request("malformed_certificate", e.to_string()))
}

/// `POST /api/v1/certificates/import`
pub async fn import_certificate(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<ImportRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let input = ImportInput {
        certificate: req
            .certificate
            .as_deref()
            .map(|c| blob(c, "certificate"))
            .transpose()?,
        chain: req
            .chain
            .iter()
            .enumerate()
            .map(|(i, c)| blob(c, &format!("chain #{}", i + 1)))
            .collect::<Result<_, _>>()?,
        private_key: req
            .private_key
            .as_deref()
            .map(|k| blob(k, "private_key"))
            .transpose()?,
        key_password: req.key_password.map(String::into_bytes),
        pkcs12: req
            .pkcs12
            .as_deref()
            .map(|p| blob(p, "pkcs12"))
            .transpose()?,
        pkcs12_password: req.pkcs12_password.map(String::into_bytes),
    };
    let now = OffsetDateTime::now_utc();
    // OpenSSL work is blocking; keep it off the async workers.
    let imported = tokio::task::spawn_blocking(move || import::read(&input, now))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "import failed",
            )
        })?
        .map_err(import_error)?;
    let leaf = parsed(&imported.leaf)?;
    // A certificate managed already keeps its team; a team's token imports only its own.
    let managed = state.store.managed_team(&leaf.facts.sha256).await?;
    if let Some(owner) = &managed {
        caller.require_team(
            &format!("certificate {}", leaf.facts.sha256),
            owner.as_deref(),
        )?;
    }
    // No key given: a pending request of ours may hold it (manual CA flow), if it is
    // the caller's to complete.
    let mut completes = None;
    let mut key_pkcs8 = imported.key_pkcs8.clone();
    if key_pkcs8.is_none() {
        let spki = certkeeper_pki::cert_spki_sha256(&imported.leaf)
            .map_err(|e| ApiError::bad_request("malformed_certificate", e.to_string()))?;
        if let Some(r) = state.store.pending_request_for_key(&spki).await? {
            caller.require_team(&format!("request {}", r.id), r.team.as_deref())?;
            key_pkcs8 = Some(open_request_key(&state, &r)?);
            completes = Some(r);
        }
    }
    let team = match managed {
        Some(owner) => owner,
        None => caller
            .team()
            .map(str::to_string)
            .or_else(|| completes.as_ref().and_then(|r| r.team.clone())),
    };
    check_policy(&state, team.as_deref(), &leaf.facts)?;

    let mut chain = imported.chain.clone();
    let complete = complete_chain(&state, &imported.leaf, &mut chain).await?;
    let mut certs = vec![leaf];
    for c in &chain {
        certs.push(parsed(c)?);
    }
    let sha = certs[0].facts.sha256;
    let renews = completes.as_ref().and_then(|r| r.renews_sha256.clone());
    let completes = completes.map(|r| r.id);
    let sealed = match &key_pkcs8 {
        Some(k) => {
            let s = state
                .vault
                .seal(k, sha.to_string().as_bytes())
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
            Some(StoredKey {
                kek_id: s.kek_id,
                wrapped_dek: s.wrapped_dek,
                ciphertext: s.ciphertext,
            })
        }
        None => None,
    };
    let outcome = state
        .store
        .save_import_for(
            &certs,
            complete,
            sealed.as_ref(),
            completes.as_deref(),
            &caller.actor(),
            team.as_deref(),
            now,
        )
        .await?;
    tracing::info!(certificate = %sha, key = outcome.key_stored, "certificate imported");
    let mut warnings = Vec::new();
    if !complete {
        warnings.push(format!(
            "the chain ends at {} without a known issuer; upload the intermediate with --chain",
            certs
                .last()
                .map(|c| c.facts.subject.clone())
                .unwrap_or_default()
        ));
    }
    let body = json!({
        "sha256": sha.to_string(),
        "common_name": certs[0].facts.common_name,
        "not_after": views::rfc3339(certs[0].facts.not_after),
        "chain": certs[1..].iter().map(|c| json!({"sha256": c.facts.sha256.to_string(), "subject": c.facts.subject})).collect::<Vec<_>>(),
        "chain_complete": complete,
        "key_stored": outcome.key_stored,
        "policy": "passed",
        "team": team,
        "request": completes,
        "renews": renews,
        "warnings": warnings,
    });
    let status = if outcome.new_certificate {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)))
}

/// Chain completion: after the given chain, issuers already in the inventory, then the
/// certificate fetched from the CA-issuers (AIA) URL of the last link, up to ten links.
/// A fetched certificate is used only if it issues the link (name and signature).
/// Whether the chain reaches a root.
async fn complete_chain(
    state: &AppState,
    leaf: &[u8],
    chain: &mut Vec<Vec<u8>>,
) -> Result<bool, ApiError> {
    while chain.len() < 10 {
        let last = chain.last().map(Vec::as_slice).unwrap_or(leaf).to_vec();
        if import::is_root(&last) {
            return Ok(true);
        }
        let facts = parsed(&last)?.facts;
        let known = state.store.certificates_with_subject(&facts.issuer).await?;
        let before = chain.len();
        if import::complete_chain(leaf, chain, &known) {
            return Ok(true);
        }
        if chain.len() > before {
            continue;
        }
        // Not known here: the issuer from the AIA URL (http or https only; an ldap://
        // URL alone leaves the chain incomplete, with the usual warning).
        let Some(url) = facts
            .ca_issuer_urls
            .iter()
            .find(|u| u.starts_with("http://") || u.starts_with("https://"))
        else {
            return Ok(false);
        };
        let body = certkeeper_connect::fetch::fetch(url, &state.config.fetch)
            .await
            .map_err(|e| {
                use certkeeper_connect::fetch::FetchError as F;
                let status = match e {
                    F::Resolve { .. }
                    | F::Status { .. }
                    | F::Timeout { .. }
                    | F::TlsUntrusted { .. }
                    | F::Connect { .. } => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(
                    status,
                    e.code(),
                    format!(
                        "fetching the issuer of {}: {e}; or give the intermediate by hand (chain)",
                        facts.subject
                    ),
                )
            })?;
        let issuer = import::fetched_certificates(&body, url)
            .map_err(import_error)?
            .into_iter()
            .find(|c| import::issues(c, &last))
            .ok_or_else(|| {
                import_error(ImportError::FetchedNotIssuer {
                    url: url.clone(),
                    subject: facts.subject.clone(),
                })
            })?;
        tracing::info!(url = %url, "chain completed from the CA-issuers URL");
        chain.push(issuer);
    }
    Ok(false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    format: String,
    #[serde(default)]
    with_key: bool,
    password: Option<String>,
}

fn pem_of(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| certkeeper_pki::to_pem(d)).collect()
}

/// `POST /api/v1/certificates/{sha256}/export`. Exporting a key is audited.
pub async fn export_certificate(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    req: Result<Json<ExportRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let fp = fingerprint_param(&sha)?;
    // Everything about the request is checked before a key is opened or an export is
    // audited: the audit log records only exports that happen.
    match (req.format.as_str(), req.with_key) {
        ("pem" | "fullchain" | "pfx" | "p12" | "pkcs12", _) | ("chain" | "der", false) => {}
        ("chain" | "der", true) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "chain and der carry no key; export the key as pem, fullchain or pfx",
            ));
        }
        (other, _) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("format must be pem, chain, fullchain, der or pfx, not {other:?}"),
            ));
        }
    }
    if matches!(req.format.as_str(), "pfx" | "p12" | "pkcs12")
        && req.password.as_deref().is_none_or(|p| p.len() < 8)
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a PKCS#12 export needs a password of at least 8 characters",
        ));
    }
    // Then who asks: the key needs export_key, and a team's token exports only its
    // team's managed certificates. A refused key export is audited with who tried.
    let owner = state.store.managed_team(&fp).await?.flatten();
    let allowed = if req.with_key {
        caller.require(Permission::ExportKey)
    } else {
        Ok(())
    }
    .and_then(|()| caller.require_team(&format!("certificate {fp}"), owner.as_deref()));
    if let Err(e) = allowed {
        if req.with_key {
            state
                .store
                .audit(
                    &caller.actor(),
                    "export_key_denied",
                    &fp.to_string(),
                    OffsetDateTime::now_utc(),
                )
                .await?;
            tracing::warn!(certificate = %fp, actor = %caller.actor(), code = e.code, "key export refused");
        }
        return Err(e);
    }
    let cert = stored_certificate(&state, &fp).await?;
    let chain = state.store.chain_of(&fp).await?;
    let served = import::served_chain(&chain).to_vec();
    let key = if req.with_key {
        let key = open_cert_key(&state, &fp).await?;
        state
            .store
            .audit(
                &caller.actor(),
                "export_key",
                &fp.to_string(),
                OffsetDateTime::now_utc(),
            )
            .await?;
        tracing::info!(certificate = %fp, format = %req.format, "private key exported");
        Some(key)
    } else {
        None
    };
    let key_pem = key
        .as_deref()
        .map(import::export::key_pem)
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "key_unavailable", e))?
        .unwrap_or_default();
    let (ctype, body): (&str, Vec<u8>) = match req.format.as_str() {
        "pem" => (
            "application/x-pem-file",
            format!("{}{key_pem}", pem_of(std::slice::from_ref(&cert.der))).into_bytes(),
        ),
        "chain" => ("application/x-pem-file", pem_of(&served).into_bytes()),
        "fullchain" => {
            let mut all = vec![cert.der.clone()];
            all.extend(served.iter().cloned());
            (
                "application/x-pem-file",
                format!("{}{key_pem}", pem_of(&all)).into_bytes(),
            )
        }
        "der" if !req.with_key => ("application/pkix-cert", cert.der.clone()),
        "der" => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "DER holds one certificate; export the key as pem or pfx",
            ));
        }
        "pfx" | "p12" | "pkcs12" => {
            let password = req.password.filter(|p| p.len() >= 8).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    "a PKCS#12 export needs a password of at least 8 characters",
                )
            })?;
            let name = cert
                .facts
                .common_name
                .clone()
                .unwrap_or_else(|| fp.to_string());
            let der = cert.der.clone();
            let p12 = tokio::task::spawn_blocking(move || {
                import::export::pkcs12(&der, &served, key.as_deref(), &password, &name)
            })
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "export failed",
                )
            })?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
            ("application/x-pkcs12", p12)
        }
        other => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("format must be pem, chain, fullchain, der or pfx, not {other:?}"),
            ));
        }
    };
    Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
}

/// `GET /api/v1/audit`
pub async fn audit_log(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let entries = state.store.audit_log(500).await?;
    let items: Vec<Value> = entries
        .into_iter()
        .map(|(at, actor, action, subject)| json!({"at": views::rfc3339(at), "actor": actor, "action": action, "subject": subject}))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    common_name: String,
    #[serde(default)]
    sans: Vec<String>,
    country: Option<String>,
    state: Option<String>,
    locality: Option<String>,
    organization: Option<String>,
    org_unit: Option<String>,
    /// rsa2048 (default), rsa3072, rsa4096, p256, p384, ed25519.
    key_type: Option<String>,
    /// Renewals of the certificate keep this key instead of generating a new one.
    #[serde(default)]
    reuse_key: bool,
}

fn request_aad(id: &str) -> Vec<u8> {
    format!("request:{id}").into_bytes()
}

fn request_view(r: &certkeeper_store::CertRequest) -> Value {
    json!({
        "id": r.id,
        "status": r.status,
        "common_name": r.common_name,
        "sans": r.sans,
        "key_type": r.key_type,
        "csr": r.csr_pem,
        "certificate_sha256": r.certificate_sha256,
        "renews_sha256": r.renews_sha256,
        "reuse_key": r.reuse_key,
        "created_at": views::rfc3339(r.created_at),
        "team": r.team,
    })
}

/// `POST /api/v1/requests`: the server generates the key (kept sealed) and the CSR,
/// and returns the CSR. The request stays pending until the signed certificate is
/// imported (manual CA); the import then picks the key up by its public key.
pub async fn create_request(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<NewRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let record = make_request(&state, req, caller.team(), &caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(request_view(&record))))
}

/// Generate a key (sealed) and a CSR, and record the pending request of `team`,
/// judged by that team's policy (key and names; validity once it is issued).
async fn make_request(
    state: &AppState,
    req: NewRequest,
    team: Option<&str>,
    actor: &str,
) -> Result<certkeeper_store::CertRequest, ApiError> {
    make_request_with(state, req, team, actor, None, None).await
}

/// [`make_request`] with an existing key (PKCS#8 DER) instead of a new one, and the
/// certificate the request renews, if any.
async fn make_request_with(
    state: &AppState,
    req: NewRequest,
    team: Option<&str>,
    actor: &str,
    existing_key: Option<Vec<u8>>,
    renews: Option<String>,
) -> Result<certkeeper_store::CertRequest, ApiError> {
    use certkeeper_pki::csr::{self, CsrRequest, San};
    let bad = |e: csr::CsrError| ApiError::bad_request("invalid_request", e.to_string());
    let spec = CsrRequest {
        common_name: req.common_name,
        sans: req
            .sans
            .iter()
            .map(|s| s.parse::<San>())
            .collect::<Result<_, _>>()
            .map_err(bad)?,
        country: req.country,
        state: req.state,
        locality: req.locality,
        organization: req.organization,
        org_unit: req.org_unit,
        key: req
            .key_type
            .as_deref()
            .unwrap_or("rsa2048")
            .parse()
            .map_err(bad)?,
    };
    let key_type = spec.key.to_string();
    let reuse_key = req.reuse_key;
    let generated = tokio::task::spawn_blocking(move || {
        csr::generate_with_key(&spec, existing_key.as_deref()).map(|g| (g, spec))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "key generation failed",
        )
    })?
    .map_err(bad)?;
    let (g, spec) = generated;
    let info = csr::inspect(&g.csr_der).map_err(bad)?;
    let policy = state.config.policy.for_team(team);
    let mut violations = policy.check_key(&info.key);
    violations.extend(
        policy.check_names(
            info.common_name
                .iter()
                .map(String::as_str)
                .chain(info.sans.iter().filter_map(|s| s.strip_prefix("DNS:"))),
        ),
    );
    refuse(team, &violations)?;
    let id = uuid::Uuid::new_v4().to_string();
    // PKCS#8 DER of the key, sealed for this request.
    let key_der = rustls::pki_types::pem::PemObject::from_pem_slice(g.key_pem.as_bytes())
        .map(|k: rustls::pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "generated key unreadable",
            )
        })?;
    let sealed = state
        .vault
        .seal(&key_der, &request_aad(&id))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let record = certkeeper_store::CertRequest {
        id,
        common_name: info.common_name.clone().unwrap_or(spec.common_name),
        sans: info.sans,
        key_type,
        csr_pem: g.csr_pem,
        spki_sha256: csr::csr_spki_sha256(&g.csr_der).map_err(bad)?,
        key: StoredKey {
            kek_id: sealed.kek_id,
            wrapped_dek: sealed.wrapped_dek,
            ciphertext: sealed.ciphertext,
        },
        status: "pending".into(),
        certificate_sha256: None,
        created_at: OffsetDateTime::now_utc(),
        issued_by: None,
        team: team.map(str::to_string),
        renews_sha256: renews,
        reuse_key,
    };
    state.store.create_request(&record, actor).await?;
    tracing::info!(request = %record.id, "certificate request created");
    Ok(record)
}

/// `GET /api/v1/requests`
pub async fn list_requests(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    // A team's token sees its team's requests only.
    let items: Vec<Value> = state
        .store
        .list_requests()
        .await?
        .iter()
        .filter(|r| certkeeper_core::access::may_act_on(caller.team(), r.team.as_deref()))
        .map(request_view)
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

/// `GET /api/v1/requests/{id}`
pub async fn show_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = state.store.request(&id).await.map_err(|e| match e {
        certkeeper_store::StoreError::NotFound => ApiError::not_found("request"),
        other => other.into(),
    })?;
    // Another team's request is not there for this token.
    if !certkeeper_core::access::may_act_on(caller.team(), r.team.as_deref()) {
        return Err(ApiError::not_found("request"));
    }
    Ok(Json(request_view(&r)))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn seal_for(state: &AppState, key: &[u8], aad: &[u8]) -> Result<StoredKey, ApiError> {
    let s = state.vault.seal(key, aad).map_err(internal)?;
    Ok(StoredKey {
        kek_id: s.kek_id,
        wrapped_dek: s.wrapped_dek,
        ciphertext: s.ciphertext,
    })
}

/// The plaintext PKCS#8 key of a stored certificate.
pub(crate) async fn open_cert_key(state: &AppState, fp: &Fingerprint) -> Result<Vec<u8>, ApiError> {
    let sealed = state.store.sealed_key(fp).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_private_key",
            "no private key is stored for this certificate",
        )
    })?;
    state
        .vault
        .open(
            &SealedKey {
                kek_id: sealed.kek_id,
                wrapped_dek: sealed.wrapped_dek,
                ciphertext: sealed.ciphertext,
            },
            fp.to_string().as_bytes(),
        )
        .map_err(|e| {
            tracing::error!(certificate = %fp, error = %e, "a stored key does not open");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_unavailable",
                "the stored key cannot be opened with the configured key-encryption keys",
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCa {
    name: String,
    /// A new root: its common name (and key type, validity).
    common_name: Option<String>,
    key_type: Option<String>,
    validity_days: Option<u32>,
    /// Or an imported CA certificate (with its key stored) by SHA-256.
    certificate_sha256: Option<String>,
    #[serde(default)]
    profile: certkeeper_pki::ca::Profile,
}

fn ca_view(
    name: &str,
    cert: &certkeeper_core::inventory::StoredCertificate,
    profile: &Value,
) -> Value {
    json!({
        "name": name,
        "sha256": cert.facts.sha256.to_string(),
        "subject": cert.facts.subject,
        "not_after": views::rfc3339(cert.facts.not_after),
        "profile": profile,
        "certificate": certkeeper_pki::to_pem(&cert.der),
    })
}

/// `POST /api/v1/cas`: a new internal root, or an imported CA (its key already stored).
pub async fn create_ca(
    State(state): State<AppState>,
    _admin: Admin,
    req: Result<Json<NewCa>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a CA name is 1 to 64 letters, digits, - or _",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let sha = match (&req.certificate_sha256, &req.common_name) {
        (Some(sha), None) => {
            let fp = fingerprint_param(sha)?;
            let cert = stored_certificate(&state, &fp).await?;
            if !cert.facts.is_ca {
                return Err(ApiError::bad_request(
                    "not_a_ca",
                    "that certificate is not a CA certificate",
                ));
            }
            open_cert_key(&state, &fp).await?;
            fp
        }
        (None, Some(cn)) => {
            let key = req.key_type.as_deref().unwrap_or("p256").parse().map_err(
                |e: certkeeper_pki::csr::CsrError| {
                    ApiError::bad_request("invalid_request", e.to_string())
                },
            )?;
            let cn = cn.clone();
            let days = req.validity_days.unwrap_or(3650);
            let (der, key_der) = tokio::task::spawn_blocking(move || {
                certkeeper_pki::ca::new_root(&cn, key, days, now)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            let root = parsed(&der)?;
            let fp = root.facts.sha256;
            let sealed = seal_for(&state, &key_der, fp.to_string().as_bytes())?;
            state
                .store
                .save_import(&[root], true, Some(&sealed), None, "admin", now)
                .await?;
            fp
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either common_name (a new root) or certificate_sha256 (an imported CA with its key)",
            ));
        }
    };
    let profile = serde_json::to_value(&req.profile).map_err(internal)?;
    state
        .store
        .create_ca(&name, &sha.to_string(), &profile.to_string(), now)
        .await?;
    let cert = state.store.certificate(&sha).await?;
    tracing::info!(ca = %name, certificate = %sha, "internal CA created");
    Ok((StatusCode::CREATED, Json(ca_view(&name, &cert, &profile))))
}

/// `GET /api/v1/cas`
pub async fn list_cas(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for (name, sha, profile) in state.store.cas(None).await? {
        let fp: Fingerprint = sha.parse().map_err(internal)?;
        let cert = state.store.certificate(&fp).await?;
        items.push(ca_view(
            &name,
            &cert,
            &serde_json::from_str(&profile).unwrap_or(Value::Null),
        ));
    }
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// A CSR (PEM) to sign; the key stays with whoever made it.
    csr: Option<String>,
    /// Or a pending request of this server; its key is kept with the certificate.
    request_id: Option<String>,
    /// Shorter than the profile's validity, if wanted.
    validity_days: Option<u32>,
}

/// `POST /api/v1/cas/{name}/issue`
pub async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<IssueRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    Ok((
        StatusCode::CREATED,
        Json(issue_from_ca(&state, &name, req, caller.team()).await?),
    ))
}

/// Sign a CSR or a pending request with the internal CA `name`, for a caller acting
/// for `scope` (a team, or `None`: server-wide). The certificate belongs to the
/// request's team, else to `scope`, and is judged by that team's policy.
async fn issue_from_ca(
    state: &AppState,
    name: &str,
    req: IssueRequest,
    scope: Option<&str>,
) -> Result<Value, ApiError> {
    let (_, ca_sha, profile) = state
        .store
        .cas(Some(name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("CA"))?;
    let mut profile: certkeeper_pki::ca::Profile =
        serde_json::from_str(&profile).map_err(internal)?;
    let request = match &req.request_id {
        Some(id) => Some(pending_request_in(state, id, scope).await?),
        None => None,
    };
    let team = match &request {
        Some(r) => r.team.clone(),
        None => scope.map(str::to_string),
    };
    let policy = state.config.policy.for_team(team.as_deref());
    if let Some(d) = req.validity_days {
        if d > profile.validity_days {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "this CA's profile allows at most {} days",
                    profile.validity_days
                ),
            ));
        }
        profile.validity_days = d;
    }
    if profile.validity_days > policy.max_validity_days {
        return Err(ApiError::bad_request(
            "policy_violation",
            format!(
                "{} days is more than the {} policy's {} days",
                profile.validity_days,
                policy_owner(team.as_deref()),
                policy.max_validity_days
            ),
        )
        .with("team", json!(team)));
    }
    let (csr_der, request) = match (&req.csr, request) {
        (Some(pem), None) => {
            let der = certkeeper_pki::csr::inspect(pem.as_bytes())
                .and_then(|_| {
                    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
                        .filter_map(Result::ok)
                        .find(|p| p.label.contains("CERTIFICATE REQUEST"))
                        .map(|p| p.contents)
                        .ok_or_else(|| {
                            certkeeper_pki::csr::CsrError::NotACsr("no PEM block".into())
                        })
                })
                .map_err(|e| ApiError::bad_request("malformed_csr", e.to_string()))?;
            (der, None)
        }
        (None, Some(r)) => {
            let der = csr_der_of(&r)?;
            (der, Some(r))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give either csr or request_id",
            ));
        }
    };
    let ca_fp: Fingerprint = ca_sha.parse().map_err(internal)?;
    let ca_cert = state.store.certificate(&ca_fp).await?;
    let ca_key = open_cert_key(state, &ca_fp).await?;
    let now = OffsetDateTime::now_utc();
    let ca_der = ca_cert.der.clone();
    let issued = tokio::task::spawn_blocking(move || {
        certkeeper_pki::ca::issue(&ca_der, &ca_key, &csr_der, &profile, now)
    })
    .await
    .map_err(internal)?
    .map_err(|e| match e {
        certkeeper_pki::ca::CaError::NameNotAllowed(_) => {
            ApiError::bad_request("name_not_allowed", e.to_string())
        }
        certkeeper_pki::ca::CaError::BadCsr(_) => {
            ApiError::bad_request("malformed_csr", e.to_string())
        }
        other => ApiError::bad_request("invalid_request", other.to_string()),
    })?;
    let leaf = parsed(&issued)?;
    check_policy(state, team.as_deref(), &leaf.facts)?;
    let sha = leaf.facts.sha256;
    // The CA's own chain follows it.
    let mut chain_ders = vec![ca_cert.der.clone()];
    chain_ders.extend(state.store.chain_of(&ca_fp).await?);
    let mut certs = vec![leaf];
    for d in &chain_ders {
        certs.push(parsed(d)?);
    }
    let key = match &request {
        Some(r) => {
            let k = open_request_key(state, r)?;
            Some(seal_for(state, &k, sha.to_string().as_bytes())?)
        }
        None => None,
    };
    let complete = certs.last().is_some_and(|c| c.facts.self_signed);
    state
        .store
        .save_import_for(
            &certs,
            complete,
            key.as_ref(),
            request.as_ref().map(|r| r.id.as_str()),
            &format!("ca:{name}"),
            team.as_deref(),
            now,
        )
        .await?;
    if let Some(r) = &request {
        state
            .store
            .set_issued_by(&r.id, &format!("ca:{name}"))
            .await?;
    }
    tracing::info!(ca = %name, certificate = %sha, "certificate issued");
    Ok(json!({
            "sha256": sha.to_string(),
            "certificate": certkeeper_pki::to_pem(&issued),
            "chain": pem_of(import::served_chain(&chain_ders)),
            "not_after": views::rfc3339(certs[0].facts.not_after),
            "request": request.map(|r| r.id),
            "key_stored": key.is_some(),
            "team": team,
    }))
}

/// A SHA-256 path parameter.
pub(crate) fn fingerprint_param(s: &str) -> Result<Fingerprint, ApiError> {
    s.parse()
        .map_err(|e: certkeeper_core::cert::BadFingerprint| {
            ApiError::bad_request("invalid_request", e.to_string())
        })
}

/// A certificate of the inventory, or 404.
pub(crate) async fn stored_certificate(
    state: &AppState,
    fp: &Fingerprint,
) -> Result<certkeeper_core::inventory::StoredCertificate, ApiError> {
    state.store.certificate(fp).await.map_err(|e| match e {
        certkeeper_store::StoreError::NotFound => ApiError::not_found("certificate"),
        other => other.into(),
    })
}

/// Refuse a certificate that breaks the policy of `team` (the server-wide policy with
/// the team's overrides), listing every broken rule.
fn check_policy(
    state: &AppState,
    team: Option<&str>,
    facts: &certkeeper_core::CertificateFacts,
) -> Result<(), ApiError> {
    refuse(team, &state.config.policy.for_team(team).check(facts))
}

/// Whose policy it is, for messages.
fn policy_owner(team: Option<&str>) -> String {
    match team {
        Some(t) => format!("team {t}'s"),
        None => "server's".into(),
    }
}

/// 422 `policy_violation` naming every broken rule and the team, if any.
fn refuse(
    team: Option<&str>,
    violations: &[certkeeper_core::policy::Violation],
) -> Result<(), ApiError> {
    if violations.is_empty() {
        return Ok(());
    }
    let rules: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.rule, v.message))
        .collect();
    // The structured list goes along for scripts.
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "policy_violation",
        format!(
            "refused by the {} policy: {}",
            policy_owner(team),
            rules.join("; ")
        ),
    )
    .with(
        "violations",
        serde_json::to_value(violations).unwrap_or_default(),
    )
    .with("team", json!(team)))
}

/// The plaintext PKCS#8 key of a pending request.
fn open_request_key(
    state: &AppState,
    r: &certkeeper_store::CertRequest,
) -> Result<Vec<u8>, ApiError> {
    let sealed = SealedKey {
        kek_id: r.key.kek_id.clone(),
        wrapped_dek: r.key.wrapped_dek.clone(),
        ciphertext: r.key.ciphertext.clone(),
    };
    state.vault.open(&sealed, &request_aad(&r.id)).map_err(|e| {
        tracing::error!(request = %r.id, error = %e, "a request's key does not open");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "key_unavailable",
            "the request's key cannot be opened",
        )
    })
}

/// `GET /api/v1/server/certificate`: what this server presents now.
pub async fn server_certificate(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let tls = state.tls.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_serving_tls",
            "this server runs plain HTTP (--http)",
        )
    })?;
    let fp = tls.fingerprint();
    let cert = stored_certificate(&state, &fp).await?;
    Ok(Json(json!({
        "sha256": fp.to_string(),
        "common_name": cert.facts.common_name,
        "sans": cert.facts.sans,
        "not_after": views::rfc3339(cert.facts.not_after),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseCertificate {
    sha256: String,
}

/// `PUT /api/v1/server/certificate`: serve another certificate of the inventory (with
/// its stored key) from the next handshake on, without a restart; other replicas of
/// the same database follow within 30 s.
pub async fn use_server_certificate(
    State(state): State<AppState>,
    caller: Caller,
    req: Result<Json<UseCertificate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let tls = state.tls.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_serving_tls",
            "this server runs plain HTTP (--http)",
        )
    })?;
    let fp = fingerprint_param(&req.sha256)?;
    let cert = stored_certificate(&state, &fp).await?;
    if cert.facts.not_after < OffsetDateTime::now_utc() {
        return Err(ApiError::bad_request(
            "certificate_expired",
            "that certificate has expired",
        ));
    }
    if cert.facts.is_ca {
        return Err(ApiError::bad_request(
            "invalid_request",
            "a CA certificate cannot be the server's certificate",
        ));
    }
    let ck = crate::identity::certified_from_inventory(&state.store, &state.vault, &fp)
        .await
        .map_err(|e| ApiError::bad_request("unusable_certificate", e))?;
    state
        .store
        .set_setting("server_certificate", &fp.to_string())
        .await?;
    tls.swap(ck, fp);
    state
        .store
        .audit(
            &caller.actor(),
            "server_certificate",
            &fp.to_string(),
            OffsetDateTime::now_utc(),
        )
        .await?;
    tracing::info!(certificate = %fp, "server certificate replaced");
    Ok(Json(
        json!({"sha256": fp.to_string(), "common_name": cert.facts.common_name, "not_after": views::rfc3339(cert.facts.not_after)}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AcmeOrder {
    /// `http-01` or `dns-01`; default: `[acme] challenge` (`http-01` with `http01_agent`).
    challenge: Option<String>,
    /// The id of the agent on the host of the names that answers http-01 (instead of
    /// this server); its renewals use it again.
    http01_agent: Option<String>,
}

/// `POST /api/v1/requests/{id}/acme`: order the request's certificate from the
/// configured ACME CA (http-01 served by this server, or dns-01 through the hook or an
/// RFC 2136 update); the key stays with the certificate.
pub async fn order_acme(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    req: Result<Json<AcmeOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    pending_request_in(&state, &id, caller.team()).await?;
    let req = match req {
        Err(JsonRejection::MissingJsonContentType(_)) => AcmeOrder::default(),
        other => other
            .map(|Json(r)| r)
            .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?,
    };
    let challenge = req
        .challenge
        .as_deref()
        .map(str::parse::<ChallengeKind>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_request", e))?;
    Ok((
        StatusCode::CREATED,
        Json(order_acme_for(&state, &id, challenge, None, req.http01_agent.as_deref()).await?),
    ))
}

/// The stored ACME account (sealed in the shared settings), if there is one.
fn open_acme_account(state: &AppState, hexed: &str) -> Result<String, ApiError> {
    let mut parts = hexed.split(':');
    let (Some(kek), Some(dek), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(internal("stored ACME account unreadable"));
    };
    let sealed = SealedKey {
        kek_id: kek.to_string(),
        wrapped_dek: hex::decode(dek).map_err(internal)?,
        ciphertext: hex::decode(ct).map_err(internal)?,
    };
    let plain = state
        .vault
        .open(&sealed, b"acme-account")
        .map_err(internal)?;
    String::from_utf8(plain).map_err(internal)
}

/// A uniformly random fraction in [0, 1), to spread renewals across ARI windows.
fn random_fraction() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Order a pending request's certificate from the configured ACME CA, with the
/// given challenge (default: the configured one); `replaces` is the DER of the
/// certificate it renews (ARI); `http01_agent` answers http-01 instead of the server.
async fn order_acme_for(
    state: &AppState,
    id: &str,
    challenge: Option<ChallengeKind>,
    replaces: Option<&[u8]>,
    http01_agent: Option<&str>,
) -> Result<Value, ApiError> {
    let acme = state.config.acme.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "acme_not_configured",
            "no [acme] CA is configured on this server",
        )
    })?;
    let challenge = match (challenge, http01_agent) {
        (Some(ChallengeKind::Dns01), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "http01_agent answers http-01 challenges; it does not go with dns-01",
            ));
        }
        (_, Some(_)) => ChallengeKind::Http01,
        (c, None) => c.unwrap_or(acme.challenge),
    };
    if let Some(agent) = http01_agent {
        if !state.store.agent_active(agent).await? {
            return Err(ApiError::bad_request(
                "unknown_agent",
                format!("no enrolled, unrevoked agent has the id {agent:?}"),
            ));
        }
    } else {
        acme.check(challenge)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "acme_challenge_unavailable", e))?;
    }
    let r = pending_request(state, id).await?;
    let mut names = Vec::new();
    for san in &r.sans {
        match (san.split_once(':'), challenge) {
            (Some(("DNS", n)), ChallengeKind::Dns01) => names.push(n.to_string()),
            (Some(("DNS", n)), ChallengeKind::Http01) if n.starts_with("*.") => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("{n} is a wildcard: only dns-01 can prove it"),
                ));
            }
            (Some(("DNS" | "IP", n)), ChallengeKind::Http01) => names.push(n.to_string()),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "{san} cannot be proved by {challenge}: ACME orders here cover DNS names (and IP addresses with http-01)"
                    ),
                ));
            }
        }
    }
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the request names nothing ACME can validate",
        ));
    }
    // The CA asked to wait (a rate limit): not before the time it named.
    if let Some(until) = state.store.acme_retry_at(&r.id).await?
        && until > OffsetDateTime::now_utc()
    {
        return Err(rate_limited(format!(
            "the ACME CA asked to wait before ordering request {} again",
            r.id
        ))
        .retry_at(until));
    }
    let csr_der = csr_der_of(&r)?;
    // The account key is sealed like any private key, in the shared settings.
    let stored = match state.store.setting("acme_account").await? {
        Some(hexed) => Some(open_acme_account(state, &hexed)?),
        None => None,
    };
    let server_tokens = crate::acme_http::StoreTokens(state.store.clone());
    let agent_tokens = http01_agent.map(|a| {
        crate::acme_agent::AgentTokens::new(
            state.store.clone(),
            a,
            &r.id,
            state.config.http01_agent_wait,
        )
    });
    let tokens: &dyn certkeeper_connect::acme::Http01Tokens = match &agent_tokens {
        Some(t) => t,
        None => &server_tokens,
    };
    let spec = certkeeper_connect::acme::OrderSpec {
        names: &names,
        csr_der: &csr_der,
        challenge,
        replaces,
    };
    let issued = match certkeeper_connect::acme::issue(
        &acme,
        stored.as_deref(),
        &spec,
        Some(tokens),
    )
    .await
    {
        Ok(issued) => issued,
        Err(AcmeError::RetryAfter { until, message }) => {
            // Kept on the request: neither the API nor the renewal pass orders it
            // again before then.
            state.store.set_acme_retry_at(&r.id, Some(until)).await?;
            tracing::warn!(request = %r.id, until = %views::rfc3339(until), "the ACME CA asked to wait");
            return Err(rate_limited(message).retry_at(until));
        }
        Err(e) => {
            return Err(match agent_tokens.as_ref().and_then(|t| t.gave_up()) {
                // The agent, not the CA: say so.
                Some(why) => {
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "http01_agent_unavailable", why)
                }
                None => ApiError::new(StatusCode::BAD_GATEWAY, "acme_failed", e.to_string()),
            });
        }
    };
    if let Some(json) = issued.created_account {
        let s = state
            .vault
            .seal(json.as_bytes(), b"acme-account")
            .map_err(internal)?;
        let value = format!(
            "{}:{}:{}",
            s.kek_id,
            hex::encode(&s.wrapped_dek),
            hex::encode(&s.ciphertext)
        );
        state.store.set_setting("acme_account", &value).await?;
    }
    let ders = certkeeper_pki::pem_to_ders(issued.chain_pem.as_bytes())
        .map_err(|e| internal(format!("the CA's answer: {e}")))?;
    let mut certs = Vec::new();
    for d in &ders {
        certs.push(parsed(d)?);
    }
    let leaf_facts = certs
        .first()
        .ok_or_else(|| internal("the CA returned no certificate"))?
        .facts
        .clone();
    check_policy(state, r.team.as_deref(), &leaf_facts)?;
    let sha = leaf_facts.sha256;
    let key = open_request_key(state, &r)?;
    let sealed = seal_for(state, &key, sha.to_string().as_bytes())?;
    let complete = certs.last().is_some_and(|c| c.facts.self_signed);
    state
        .store
        .save_import(
            &certs,
            complete,
            Some(&sealed),
            Some(&r.id),
            "acme",
            OffsetDateTime::now_utc(),
        )
        .await?;
    state.store.set_issued_by(&r.id, "acme").await?;
    // The CA's suggested window (ARI) sets the renewal time; else two thirds through.
    let renew_at = issued
        .renewal_window
        .and_then(|w| ari_time(&w, None, leaf_facts.not_after, &sha.to_string()));
    state
        .store
        .set_acme_details(&r.id, &challenge.to_string(), renew_at)
        .await?;
    if let Some(w) = issued.renewal_window {
        // The window is asked for again after the CA's Retry-After (RFC 9773 §4.3).
        state
            .store
            .set_ari(&r.id, renew_at, Some(w.next_check))
            .await?;
    }
    state
        .store
        .set_acme_http01_agent(&r.id, http01_agent)
        .await?;
    let renewal_time = renew_at.unwrap_or_else(|| {
        certkeeper_core::expiry::renewal_time(leaf_facts.not_before, leaf_facts.not_after)
    });
    tracing::info!(request = %r.id, certificate = %sha, %challenge, "certificate ordered over ACME");
    Ok(json!({
            "sha256": sha.to_string(),
            "certificate": certkeeper_pki::to_pem(&ders[0]),
            "chain": pem_of(&ders[1..]),
            "not_after": views::rfc3339(leaf_facts.not_after),
            "request": r.id,
            "key_stored": true,
            "challenge": challenge.to_string(),
            "renewal_time": views::rfc3339(renewal_time),
            "renewal_time_source": if renew_at.is_some() { "ari" } else { "two_thirds" },
    }))
}

/// The CA asked to wait (rate limit, or 429/503 with Retry-After).
fn rate_limited(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "acme_rate_limited",
        message,
    )
}

/// The renewal time inside the CA's window `w`: `current` if it is still inside (a
/// window asked for again and unchanged keeps its time), else a random point in it.
fn ari_time(
    w: &RenewalWindow,
    current: Option<OffsetDateTime>,
    not_after: OffsetDateTime,
    certificate: &str,
) -> Option<OffsetDateTime> {
    if let Some(t) = current
        && t >= w.start
        && t <= w.end.min(not_after)
    {
        return Some(t);
    }
    certkeeper_core::expiry::ari_renewal_time(w.start, w.end, not_after, random_fraction())
        .inspect_err(
            |e| tracing::warn!(certificate, error = %e, "ignoring the CA's renewal window"),
        )
        .ok()
}

/// Ask the ACME CA again for the renewal windows that are due to be checked (RFC 9773
/// §4.3: after the Retry-After of the last answer), so that a window the CA moves
/// (earlier, into the past, say after an incident) takes effect at the next pass.
async fn refresh_ari(state: &AppState, now: OffsetDateTime) -> Result<(), ApiError> {
    let Some(acme) = state.config.acme.clone() else {
        return Ok(());
    };
    let due = state.store.claim_ari_checks(now, 600, 100).await?;
    if due.is_empty() {
        return Ok(());
    }
    let Some(hexed) = state.store.setting("acme_account").await? else {
        return Ok(());
    };
    let account = open_acme_account(state, &hexed)?;
    for (id, sha, current) in due {
        let cert = stored_certificate(state, &fingerprint_param(&sha)?).await?;
        match certkeeper_connect::acme::renewal_info(&acme, &account, &cert.der).await {
            Ok(Some(w)) => {
                let at = ari_time(&w, current, cert.facts.not_after, &sha);
                if at != current {
                    tracing::info!(request = %id, certificate = %sha, renew_at = ?at.map(views::rfc3339), "the CA moved the renewal window");
                }
                state.store.set_ari(&id, at, Some(w.next_check)).await?;
            }
            // The CA offers no ARI any more: two thirds through the validity.
            Ok(None) => state.store.set_ari(&id, None, None).await?,
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "renewal information not available; asked again later");
            }
        }
    }
    Ok(())
}

/// Renew the certificate of an issued request: the same names and key type, a new
/// key (or the same one, with `reuse_key`), the same issuer (the internal CA or the
/// ACME CA that issued it).
async fn renew(
    state: &AppState,
    old: &certkeeper_store::CertRequest,
    actor: &str,
    reuse_key: bool,
) -> Result<Value, ApiError> {
    let issuer = old.issued_by.clone().ok_or_else(|| {
        ApiError::bad_request(
            "not_renewable",
            "only certificates this server issued (internal CA or ACME) renew here",
        )
    })?;
    let spec = NewRequest {
        common_name: old.common_name.clone(),
        sans: old.sans.clone(),
        country: None,
        state: None,
        locality: None,
        organization: None,
        org_unit: None,
        key_type: Some(old.key_type.clone()),
        reuse_key: old.reuse_key,
    };
    let key = match (
        &old.certificate_sha256,
        reuse_key || renews_with_same_key(state, old),
    ) {
        (Some(sha), true) => Some(open_cert_key(state, &fingerprint_param(sha)?).await?),
        _ => None,
    };
    // The renewal belongs to the same team and follows its policy as it is now.
    let new = make_request_with(state, spec, old.team.as_deref(), actor, key, None).await?;
    let issued = match issuer.strip_prefix("ca:") {
        Some(ca) => {
            issue_from_ca(
                state,
                ca,
                IssueRequest {
                    csr: None,
                    request_id: Some(new.id.clone()),
                    validity_days: None,
                },
                old.team.as_deref(),
            )
            .await?
        }
        None if issuer == "acme" => {
            // The same challenge as the first order, and ARI's `replaces`.
            let (challenge, _) = state.store.acme_details(&old.id).await?;
            let challenge = challenge.and_then(|c| c.parse::<ChallengeKind>().ok());
            let old_der = match &old.certificate_sha256 {
                Some(sha) => Some(
                    stored_certificate(state, &fingerprint_param(sha)?)
                        .await?
                        .der,
                ),
                None => None,
            };
            // An agent that answered http-01 answers again.
            let agent = state.store.acme_http01_agent(&old.id).await?;
            order_acme_for(
                state,
                &new.id,
                challenge,
                old_der.as_deref(),
                agent.as_deref(),
            )
            .await?
        }
        None => return Err(internal(format!("unknown issuer {issuer}"))),
    };
    state.store.set_renewed_by(&old.id, &new.id).await?;
    crate::deploy::redeploy_renewed(state, old.certificate_sha256.as_deref(), &issued).await;
    tracing::info!(old = ?old.certificate_sha256, new = %issued["sha256"], "certificate renewed");
    Ok(json!({"renewed": old.certificate_sha256, "request": new.id, "certificate": issued}))
}

/// Whether renewals keep the key: server-wide, or asked for by the request.
fn renews_with_same_key(state: &AppState, r: &certkeeper_store::CertRequest) -> bool {
    state.config.reuse_key || r.reuse_key
}

/// Start the renewal of an imported certificate (a CA outside this server signs it):
/// a pending request with the certificate's subject, names and key type, and a new key
/// (or its key, with `reuse_key`), linked to the certificate. Importing the signed
/// certificate completes it, as any pending request.
async fn request_renewal(
    state: &AppState,
    fp: &Fingerprint,
    actor: &str,
    reuse_key: bool,
) -> Result<Value, ApiError> {
    let cert = stored_certificate(state, fp).await?;
    if state.store.sealed_key(fp).await?.is_none() {
        return Err(ApiError::bad_request(
            "not_renewable",
            "no private key is stored for this certificate, so no renewal request can be made for it",
        ));
    }
    // One renewal request at a time: the one waiting for its signed certificate.
    if let Some(id) = state.store.renewal_request_of(&fp.to_string()).await?
        && state.store.request(&id).await?.status == "pending"
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "renewal_pending",
            format!("renewal request {id} is waiting for the CA-signed certificate; import it to complete the renewal"),
        )
        .with("request", json!(id)));
    }
    // The request this certificate came from (manual CA flow) may ask to keep the key.
    let origin_reuse = state
        .store
        .request_for_certificate(&fp.to_string())
        .await?
        .is_some_and(|r| renews_with_same_key(state, &r));
    let reuse = reuse_key || origin_reuse || state.config.reuse_key;
    let mut spec = renewal_spec(&cert)?;
    spec.reuse_key = origin_reuse;
    let key = match reuse {
        true => Some(open_cert_key(state, fp).await?),
        false => None,
    };
    // The renewal belongs to the certificate's team and follows its policy.
    let team = state.store.managed_team(fp).await?.flatten();
    let new = make_request_with(
        state,
        spec,
        team.as_deref(),
        actor,
        key,
        Some(fp.to_string()),
    )
    .await?;
    state
        .store
        .set_renewal_request(&fp.to_string(), &new.id)
        .await?;
    tracing::info!(certificate = %fp, request = %new.id, "renewal request made for an imported certificate");
    Ok(json!({"renews": fp.to_string(), "request": request_view(&new), "reused_key": reuse}))
}

/// The request fields of an existing certificate: its subject, names and key type.
fn renewal_spec(
    cert: &certkeeper_core::inventory::StoredCertificate,
) -> Result<NewRequest, ApiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x) = X509Certificate::from_der(&cert.der).map_err(internal)?;
    let subject = x.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let f = &cert.facts;
    let key_type = match (f.key.key_type.as_str(), f.key.bits, f.key.curve.as_deref()) {
        ("rsa", Some(3072), _) => "rsa3072",
        ("rsa", Some(4096), _) => "rsa4096",
        ("ec", _, Some(c)) if c.contains("384") => "p384",
        ("ec", _, _) => "p256",
        ("ed25519", _, _) => "ed25519",
        _ => "rsa2048",
    };
    Ok(NewRequest {
        common_name: f
            .common_name
            .clone()
            .or_else(|| f.sans.first().cloned())
            .ok_or_else(|| {
                ApiError::bad_request("not_renewable", "the certificate names no host")
            })?,
        sans: f.sans.clone(),
        country: first(&mut subject.iter_country()),
        state: first(&mut subject.iter_state_or_province()),
        locality: first(&mut subject.iter_locality()),
        organization: first(&mut subject.iter_organization()),
        org_unit: first(&mut subject.iter_organizational_unit()),
        key_type: Some(key_type.into()),
        reuse_key: false,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RenewOptions {
    /// Keep the certificate's key instead of generating a new one.
    #[serde(default)]
    reuse_key: bool,
}

/// `POST /api/v1/certificates/{sha256}/renew`: renew now, whatever the renewal time.
/// A certificate this server issued is issued again; an imported one (with its key
/// stored) gets a pending renewal request for its CA.
pub async fn renew_certificate(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    req: Result<Json<RenewOptions>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let opts = optional_body(req)?;
    let fp = fingerprint_param(&sha)?;
    let body = match state.store.request_for_certificate(&fp.to_string()).await? {
        Some(old) if old.issued_by.is_some() => {
            caller.require_team(&format!("certificate {fp}"), old.team.as_deref())?;
            if old
                .issued_by
                .as_deref()
                .is_some_and(|i| i.starts_with("ca:"))
            {
                caller.require(Permission::Issue)?;
            }
            renew(&state, &old, &caller.actor(), opts.reuse_key).await?
        }
        _ => {
            let team = state.store.managed_team(&fp).await?.flatten();
            caller.require_team(&format!("certificate {fp}"), team.as_deref())?;
            request_renewal(&state, &fp, &caller.actor(), opts.reuse_key).await?
        }
    };
    Ok((StatusCode::CREATED, Json(body)))
}

/// A JSON body that may be left out entirely (no Content-Type).
fn optional_body<T: Default>(req: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match req {
        Err(JsonRejection::MissingJsonContentType(_)) => Ok(T::default()),
        other => other
            .map(|Json(r)| r)
            .map_err(|e| ApiError::bad_request("invalid_request", e.body_text())),
    }
}

/// Renew everything due at `now` (the CA's ARI time, else two thirds through its
/// validity; renewal windows due to be asked for again are refreshed first), once across
/// replicas: certificates this server issued are issued again; imported ones get a
/// pending renewal request.
pub(crate) async fn renewal_pass(state: &AppState, now: OffsetDateTime) -> Result<Value, ApiError> {
    if let Err(e) = refresh_ari(state, now).await {
        tracing::warn!(error = %e.message, "renewal information could not be refreshed");
    }
    let due = state.store.claim_due_renewals(now, 900, 100).await?;
    let mut renewed = Vec::new();
    let mut failed = Vec::new();
    for old in &due {
        match renew(state, old, "renewal", false).await {
            Ok(v) => renewed.push(v),
            Err(e) if e.retry_at.is_some() => {
                // The CA named a time: the claim lasts until then, not a fixed lease.
                let until = e.retry_at.unwrap_or(now);
                state.store.defer_renewal(&old.id, until).await?;
                tracing::warn!(request = %old.id, until = %views::rfc3339(until), error = %e.message, "renewal deferred to the time the CA asked for");
                failed.push(json!({"request": old.id, "certificate": old.certificate_sha256, "error": {"code": e.code, "message": e.message, "retry_after": views::rfc3339(until)}}));
            }
            Err(e) => {
                tracing::warn!(request = %old.id, error = %e.message, "renewal failed; retried after the claim expires");
                failed.push(json!({"request": old.id, "certificate": old.certificate_sha256, "error": {"code": e.code, "message": e.message}}));
            }
        }
    }
    let mut requested = Vec::new();
    for sha in state
        .store
        .claim_due_imported_renewals(now, 900, 100)
        .await?
    {
        match request_renewal(state, &fingerprint_param(&sha)?, "renewal", false).await {
            Ok(v) => requested.push(v),
            Err(e) => {
                tracing::warn!(certificate = %sha, error = %e.message, "renewal request failed; retried after the claim expires");
                failed.push(
                    json!({"certificate": sha, "error": {"code": e.code, "message": e.message}}),
                );
            }
        }
    }
    Ok(json!({"renewed": renewed, "requested": requested, "failed": failed}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RenewalRun {
    /// Run as of this time (RFC 3339) instead of now: "what would renew on that day".
    #[serde(default, with = "time::serde::rfc3339::option")]
    at: Option<OffsetDateTime>,
}

/// `POST /api/v1/renewals`: run the renewal pass now (the server also runs it every 10 minutes).
pub async fn run_renewals(
    State(state): State<AppState>,
    _admin: Admin,
    req: Result<Json<RenewalRun>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = optional_body(req)?;
    Ok(Json(
        renewal_pass(&state, req.at.unwrap_or_else(OffsetDateTime::now_utc)).await?,
    ))
}

/// A request that is still pending, or 404 / 409.
async fn pending_request(
    state: &AppState,
    id: &str,
) -> Result<certkeeper_store::CertRequest, ApiError> {
    pending_request_in(state, id, None).await
}

/// A request that `scope` (a team, or `None`: server-wide) may act on and that is
/// still pending, or 404 / 403 / 409.
async fn pending_request_in(
    state: &AppState,
    id: &str,
    scope: Option<&str>,
) -> Result<certkeeper_store::CertRequest, ApiError> {
    let r = state.store.request(id).await.map_err(|e| match e {
        certkeeper_store::StoreError::NotFound => ApiError::not_found("request"),
        other => other.into(),
    })?;
    team_check(scope, &format!("request {id}"), r.team.as_deref())?;
    if r.status != "pending" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_not_pending",
            format!("request {id} is {}", r.status),
        ));
    }
    Ok(r)
}

/// The DER of a stored request's CSR.
fn csr_der_of(r: &certkeeper_store::CertRequest) -> Result<Vec<u8>, ApiError> {
    x509_parser::pem::Pem::iter_from_buffer(r.csr_pem.as_bytes())
        .filter_map(Result::ok)
        .next()
        .map(|p| p.contents)
        .ok_or_else(|| internal("stored CSR unreadable"))
}
