//! Import and export of managed certificates, and the audit log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use certkeeper_core::Fingerprint;
use certkeeper_pki::import::{self, ImportError, ImportInput};
use certkeeper_pki::vault::SealedKey;
use certkeeper_store::{ParsedCert, StoredKey};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::Admin;
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
    _admin: Admin,
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
    let violations = state.config.policy.check(&leaf.facts);
    if !violations.is_empty() {
        let rules: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.rule, v.message))
            .collect();
        // The structured list goes along for scripts.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_violation",
            format!("refused by policy: {}", rules.join("; ")),
        )
        .with(
            "violations",
            serde_json::to_value(&violations).unwrap_or_default(),
        ));
    }

    // Chain completion: the given chain, then issuers already in the inventory.
    let mut chain = imported.chain.clone();
    let mut complete = false;
    for _ in 0..10 {
        let last = chain.last().map(Vec::as_slice).unwrap_or(&imported.leaf);
        let issuer = parsed(last)?.facts.issuer;
        let known = state.store.certificates_with_subject(&issuer).await?;
        let before = chain.len();
        complete = import::complete_chain(&imported.leaf, &mut chain, &known);
        if complete || chain.len() == before {
            break;
        }
    }
    let mut certs = vec![leaf];
    for c in &chain {
        certs.push(parsed(c)?);
    }
    let sha = certs[0].facts.sha256;
    let sealed = match &imported.key_pkcs8 {
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
        .save_import(&certs, complete, sealed.as_ref(), "admin", now)
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
        "warnings": warnings,
    });
    let status = if outcome.new_certificate {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)))
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
    _admin: Admin,
    Path(sha): Path<String>,
    req: Result<Json<ExportRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let fp: Fingerprint = sha
        .parse()
        .map_err(|e: certkeeper_core::cert::BadFingerprint| {
            ApiError::bad_request("invalid_request", e.to_string())
        })?;
    let cert = state.store.certificate(&fp).await.map_err(|e| match e {
        certkeeper_store::StoreError::NotFound => ApiError::not_found("certificate"),
        other => other.into(),
    })?;
    let chain = state.store.chain_of(&fp).await?;
    let served = import::served_chain(&chain).to_vec();
    let key = if req.with_key {
        let sealed = state.store.sealed_key(&fp).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_private_key",
                "no private key is stored for this certificate",
            )
        })?;
        let key = state
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
            })?;
        state
            .store
            .audit(
                "admin",
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
