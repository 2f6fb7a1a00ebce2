//! Managed certificates: imported with their verified chain and, when given, their
//! private key sealed by the server's vault. The store only ever sees sealed keys.

use sqlx::Row;
use time::OffsetDateTime;

use crate::ingest::{Batch, Val, certificate_row};
use crate::{ParsedCert, Store, StoreError, get};

/// A private key as the store keeps it (see `certkeeper_pki::vault::SealedKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey(kek {})", self.kek_id)
    }
}

/// A certificate request whose key the server generated and keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    pub id: String,
    pub common_name: String,
    pub sans: Vec<String>,
    pub key_type: String,
    pub csr_pem: String,
    /// SHA-256 of the request's SubjectPublicKeyInfo: how the signed certificate is matched.
    pub spki_sha256: String,
    pub key: StoredKey,
    /// `pending` until the signed certificate is imported, then `issued`.
    pub status: String,
    pub certificate_sha256: Option<String>,
    pub created_at: OffsetDateTime,
    /// `acme` or `ca:NAME` once issued through the server.
    pub issued_by: Option<String>,
    /// The team owning the request (and the certificate it becomes); `None`: no team.
    pub team: Option<String>,
    /// The certificate this request renews (a pending renewal of an imported certificate).
    pub renews_sha256: Option<String>,
    /// Renewals of this request's certificate keep its key.
    pub reuse_key: bool,
}

fn request_from_row(r: &sqlx::any::AnyRow) -> Result<CertRequest, StoreError> {
    let sans: String = r.try_get("sans")?;
    Ok(CertRequest {
        id: r.try_get("id")?,
        common_name: r.try_get("common_name")?,
        sans: serde_json::from_str(&sans).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        key_type: r.try_get("key_type")?,
        csr_pem: r.try_get("csr_pem")?,
        spki_sha256: r.try_get("spki_sha256")?,
        key: StoredKey {
            kek_id: r.try_get("kek_id")?,
            wrapped_dek: r.try_get("wrapped_dek")?,
            ciphertext: r.try_get("ciphertext")?,
        },
        status: r.try_get("status")?,
        certificate_sha256: r.try_get("certificate_sha256")?,
        created_at: crate::ts(r.try_get("created_at")?)?,
        issued_by: r.try_get("issued_by")?,
        team: r.try_get("team")?,
        renews_sha256: r.try_get("renews_sha256")?,
        reuse_key: r.try_get::<i64, _>("reuse_key")? != 0,
    })
}

const REQUEST_COLUMNS: &str = "id, common_name, sans, key_type, csr_pem, spki_sha256, kek_id, wrapped_dek, ciphertext, status, certificate_sha256, created_at, issued_by, team, renews_sha256, reuse_key";

/// Where a sealed key is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHolder {
    /// A certificate's key (`private_keys`).
    Certificate,
    /// A pending request's key (`cert_requests`).
    Request,
}

/// What an import changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The leaf was not in the inventory before.
    pub new_certificate: bool,
    /// A key was stored now (false: none given, or one was already stored).
    pub key_stored: bool,
}

impl Store {
    /// Save an imported certificate: `certs` is the leaf then its ordered chain; all in
    /// one transaction with the sealed key and an audit entry.
    /// When `completes` names a pending request, it is marked issued in the same
    /// transaction.
    /// The certificate belongs to the team of the request it completes, if any.
    pub async fn save_import(
        &self,
        certs: &[ParsedCert],
        chain_complete: bool,
        key: Option<&StoredKey>,
        completes: Option<&str>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<ImportOutcome, StoreError> {
        self.save_import_for(certs, chain_complete, key, completes, actor, None, now)
            .await
    }

    /// [`Store::save_import`] for `team` (else the completed request's team). A
    /// certificate managed already keeps the team it has.
    #[allow(clippy::too_many_arguments)] // each argument is one fact of the import
    pub async fn save_import_for(
        &self,
        certs: &[ParsedCert],
        chain_complete: bool,
        key: Option<&StoredKey>,
        completes: Option<&str>,
        actor: &str,
        team: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<ImportOutcome, StoreError> {
        let leaf = certs
            .first()
            .ok_or(StoreError::NotFound)?
            .facts
            .sha256
            .to_string();
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        // Same lock order as ingest (by SHA-256), so the two cannot deadlock.
        let mut sorted: Vec<&ParsedCert> = certs.iter().collect();
        sorted.sort_by_key(|c| c.facts.sha256);
        let rows: Vec<Vec<Val>> = sorted.iter().map(|c| certificate_row(c, now)).collect();
        let before = sqlx::query("SELECT 1 FROM certificates WHERE sha256 = $1")
            .bind(&leaf)
            .fetch_optional(&mut *tx)
            .await?
            .is_none();
        Batch::new(
            self.backend,
            "INSERT INTO certificates (sha256, der, sha1, serial, subject, common_name, sans, issuer, not_before, not_after, key_type, key_bits, key_curve, signature_algorithm, is_ca, self_signed, subject_key_id, authority_key_id, ocsp_urls, ca_issuer_urls, crl_urls, first_seen) VALUES ",
            rows,
            " ON CONFLICT (sha256) DO NOTHING",
        )
        .execute(&mut tx)
        .await?;
        sqlx::query("DELETE FROM certificate_chains WHERE leaf_sha256 = $1")
            .bind(&leaf)
            .execute(&mut *tx)
            .await?;
        let chain_rows: Vec<Vec<Val>> = certs[1..]
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    Val::Text(leaf.clone()),
                    Val::Int(i as i64),
                    Val::Text(c.facts.sha256.to_string()),
                ]
            })
            .collect();
        Batch::new(
            self.backend,
            "INSERT INTO certificate_chains (leaf_sha256, position, sha256) VALUES ",
            chain_rows,
            "",
        )
        .execute(&mut tx)
        .await?;
        sqlx::query(
            "INSERT INTO managed_certificates (sha256, source, chain_complete, imported_at, team) \
             VALUES ($1, 'import', $2, $3, COALESCE($4, (SELECT team FROM cert_requests WHERE id = $5))) \
             ON CONFLICT (sha256) DO UPDATE SET chain_complete = excluded.chain_complete, \
             team = COALESCE(managed_certificates.team, excluded.team)",
        )
        .bind(&leaf)
        .bind(i64::from(chain_complete))
        .bind(now.unix_timestamp())
        .bind(team)
        .bind(completes)
        .execute(&mut *tx)
        .await?;
        let mut key_stored = false;
        if let Some(k) = key {
            key_stored = sqlx::query(
                "INSERT INTO private_keys (cert_sha256, kek_id, wrapped_dek, ciphertext, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cert_sha256) DO NOTHING",
            )
            .bind(&leaf)
            .bind(&k.kek_id)
            .bind(k.wrapped_dek.clone())
            .bind(k.ciphertext.clone())
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        if let Some(id) = completes {
            sqlx::query(
                "UPDATE cert_requests SET status = 'issued', certificate_sha256 = $2, completed_at = $3 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(&leaf)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        }
        audit(
            &mut tx,
            actor,
            if key_stored {
                "import_with_key"
            } else {
                "import"
            },
            &leaf,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(ImportOutcome {
            new_certificate: before,
            key_stored,
        })
    }

    /// Register an internal CA by name: its certificate (already stored with its key)
    /// and its issuing profile (JSON).
    pub async fn create_ca(
        &self,
        name: &str,
        cert_sha256: &str,
        profile: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("INSERT INTO cas (name, cert_sha256, profile, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(cert_sha256)
            .bind(profile)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::Exists(format!("a CA named {name}")));
        }
        audit(&mut tx, "admin", "create_ca", name, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// (name, certificate SHA-256, profile JSON) of every CA, or of the one named.
    pub async fn cas(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = match name {
            Some(n) => {
                sqlx::query("SELECT name, cert_sha256, profile FROM cas WHERE name = $1")
                    .bind(n)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT name, cert_sha256, profile FROM cas ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Record a new pending request, audited as made by `actor`.
    pub async fn create_request(&self, r: &CertRequest, actor: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO cert_requests (id, common_name, sans, key_type, csr_pem, spki_sha256, kek_id, wrapped_dek, ciphertext, status, certificate_sha256, created_at, completed_at, team, renews_sha256, reuse_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', NULL, $10, NULL, $11, $12, $13)",
        )
        .bind(&r.id)
        .bind(&r.common_name)
        .bind(serde_json::to_string(&r.sans).unwrap_or_else(|_| "[]".into()))
        .bind(&r.key_type)
        .bind(&r.csr_pem)
        .bind(&r.spki_sha256)
        .bind(&r.key.kek_id)
        .bind(r.key.wrapped_dek.clone())
        .bind(r.key.ciphertext.clone())
        .bind(r.created_at.unix_timestamp())
        .bind(r.team.as_deref())
        .bind(&r.renews_sha256)
        .bind(i64::from(r.reuse_key))
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, actor, "request", &r.id, r.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record which issuer (`acme` or `ca:NAME`) completed a request.
    pub async fn set_issued_by(&self, id: &str, issuer: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE cert_requests SET issued_by = $2 WHERE id = $1")
            .bind(id)
            .bind(issuer)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Issued requests whose certificate is due for renewal at `now` (the CA's ARI
    /// time when there is one, else two thirds through its validity) and not renewed yet, each claimed for `lease`
    /// seconds so that replicas do not renew the same certificate twice.
    pub async fn claim_due_renewals(
        &self,
        now: OffsetDateTime,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<CertRequest>, StoreError> {
        let t = now.unix_timestamp();
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM cert_requests r WHERE r.status = 'issued' AND r.issued_by IS NOT NULL AND r.renewed_by IS NULL \
             AND (r.renewal_claimed_until IS NULL OR r.renewal_claimed_until < $1) \
             AND (r.ari_renew_at <= $1 OR r.ari_renew_at IS NULL AND EXISTS (SELECT 1 FROM certificates c WHERE c.sha256 = r.certificate_sha256 AND c.not_before + (c.not_after - c.not_before) * 2 / 3 <= $1)) \
             ORDER BY r.created_at LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(t)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = Vec::new();
        for r in rows {
            let req = request_from_row(&r)?;
            let _w = self.writer().await;
            let won = sqlx::query(
                "UPDATE cert_requests SET renewal_claimed_until = $2 WHERE id = $1 AND renewed_by IS NULL AND (renewal_claimed_until IS NULL OR renewal_claimed_until < $3)",
            )
            .bind(&req.id)
            .bind(t + lease)
            .bind(t)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if won {
                claimed.push(req);
            }
        }
        Ok(claimed)
    }

    /// Imported certificates (not issued through this server) with a stored key, not
    /// CA or self-signed, due for renewal at `now` (two thirds through their validity)
    /// and with no renewal request yet; each claimed for `lease` seconds so that
    /// replicas do not both make one. Their SHA-256, soonest expiry first.
    pub async fn claim_due_imported_renewals(
        &self,
        now: OffsetDateTime,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let t = now.unix_timestamp();
        let rows = sqlx::query(
            "SELECT m.sha256 FROM managed_certificates m JOIN certificates c ON c.sha256 = m.sha256 \
             WHERE m.renewal_request IS NULL AND (m.renewal_claimed_until IS NULL OR m.renewal_claimed_until < $1) \
             AND c.is_ca = 0 AND c.self_signed = 0 \
             AND c.not_before + (c.not_after - c.not_before) * 2 / 3 <= $1 \
             AND EXISTS (SELECT 1 FROM private_keys k WHERE k.cert_sha256 = m.sha256) \
             AND NOT EXISTS (SELECT 1 FROM cert_requests r WHERE r.certificate_sha256 = m.sha256 AND r.issued_by IS NOT NULL) \
             ORDER BY c.not_after, m.sha256 LIMIT $2",
        )
        .bind(t)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for r in rows {
            let sha: String = r.try_get(0)?;
            let _w = self.writer().await;
            let won = sqlx::query(
                "UPDATE managed_certificates SET renewal_claimed_until = $2 WHERE sha256 = $1 AND renewal_request IS NULL \
                 AND (renewal_claimed_until IS NULL OR renewal_claimed_until < $3)",
            )
            .bind(&sha)
            .bind(t + lease)
            .bind(t)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if won {
                claimed.push(sha);
            }
        }
        Ok(claimed)
    }

    /// The request made to renew an imported certificate, if one was.
    pub async fn renewal_request_of(&self, sha256: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT renewal_request FROM managed_certificates WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// Record the pending request made to renew an imported certificate.
    pub async fn set_renewal_request(&self, sha256: &str, request: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE managed_certificates SET renewal_request = $2 WHERE sha256 = $1")
            .bind(sha256)
            .bind(request)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Mark `old` renewed by the request `new`.
    pub async fn set_renewed_by(&self, old: &str, new: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE cert_requests SET renewed_by = $2 WHERE id = $1")
            .bind(old)
            .bind(new)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The request that produced a certificate, if the server made its key.
    pub async fn request_for_certificate(
        &self,
        sha256: &str,
    ) -> Result<Option<CertRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM cert_requests WHERE certificate_sha256 = $1 LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// One request by id.
    pub async fn request(&self, id: &str) -> Result<CertRequest, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM cert_requests WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        request_from_row(&row)
    }

    /// All requests, newest first.
    pub async fn list_requests(&self) -> Result<Vec<CertRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM cert_requests ORDER BY created_at DESC, id LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// The pending request whose public key is `spki_sha256`, if any.
    pub async fn pending_request_for_key(
        &self,
        spki_sha256: &str,
    ) -> Result<Option<CertRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM cert_requests WHERE spki_sha256 = $1 AND status = 'pending' LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(spki_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// DER of inventory certificates whose subject is `subject` (issuer candidates).
    pub async fn certificates_with_subject(
        &self,
        subject: &str,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        // Managed (imported, verified) certificates first, so reported ones that merely
        // share the name cannot crowd them out.
        let rows = sqlx::query(
            "SELECT der FROM certificates WHERE subject = $1 \
             ORDER BY CASE WHEN sha256 IN (SELECT sha256 FROM managed_certificates) THEN 0 ELSE 1 END, first_seen LIMIT 50",
        )
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| get::<Vec<u8>>(r, "der")).collect()
    }

    /// The chain of a certificate, leaf's issuer first: the verified chain of an import,
    /// else the chain an endpoint last presented with it.
    pub async fn chain_of(
        &self,
        leaf: &certkeeper_core::Fingerprint,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let sha = leaf.to_string();
        let mut rows = sqlx::query(
            "SELECT c.der FROM certificate_chains k JOIN certificates c ON c.sha256 = k.sha256 WHERE k.leaf_sha256 = $1 ORDER BY k.position",
        )
        .bind(&sha)
        .fetch_all(&self.pool)
        .await?;
        // Only certificates nobody manages fall back to what an endpoint presented: a
        // managed certificate's chain is the verified one, never an agent's claim.
        let managed = sqlx::query("SELECT 1 FROM managed_certificates WHERE sha256 = $1")
            .bind(&sha)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        if rows.is_empty() && !managed {
            rows = sqlx::query(
                "SELECT c.der FROM endpoint_chain k JOIN certificates c ON c.sha256 = k.sha256 \
                 WHERE k.endpoint_id = (SELECT id FROM endpoints WHERE sha256 = $1 ORDER BY last_seen DESC LIMIT 1) AND k.position > 0 ORDER BY k.position",
            )
            .bind(&sha)
            .fetch_all(&self.pool)
            .await?;
        }
        rows.iter().map(|r| get::<Vec<u8>>(r, "der")).collect()
    }

    /// Whether a certificate is managed, and by which team: `None` when it is not
    /// managed (discovered only, or unknown), `Some(None)` when managed by no team.
    pub async fn managed_team(
        &self,
        cert: &certkeeper_core::Fingerprint,
    ) -> Result<Option<Option<String>>, StoreError> {
        let row = sqlx::query("SELECT team FROM managed_certificates WHERE sha256 = $1")
            .bind(cert.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Option<String>, _>(0).map_err(StoreError::from))
            .transpose()
    }

    /// The sealed private key of a certificate, if one is stored.
    pub async fn sealed_key(
        &self,
        cert: &certkeeper_core::Fingerprint,
    ) -> Result<Option<StoredKey>, StoreError> {
        let row = sqlx::query(
            "SELECT kek_id, wrapped_dek, ciphertext FROM private_keys WHERE cert_sha256 = $1",
        )
        .bind(cert.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|r| stored_key(r, 0)).transpose()
    }

    /// Sealed keys of `holder` not wrapped by `kek_id`, up to `limit`, each with the
    /// id of its row (a certificate's SHA-256, or a pending request's id).
    pub async fn keys_not_under(
        &self,
        holder: KeyHolder,
        kek_id: &str,
        limit: i64,
    ) -> Result<Vec<(String, StoredKey)>, StoreError> {
        let sql = match holder {
            KeyHolder::Certificate => {
                "SELECT cert_sha256, kek_id, wrapped_dek, ciphertext FROM private_keys WHERE kek_id <> $1 LIMIT $2"
            }
            KeyHolder::Request => {
                "SELECT id, kek_id, wrapped_dek, ciphertext FROM cert_requests WHERE kek_id <> $1 AND status = 'pending' LIMIT $2"
            }
        };
        let rows = sqlx::query(sql)
            .bind(kek_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, stored_key(r, 1)?)))
            .collect()
    }

    /// Replace a key's wrapping (rotation), only if it is still wrapped by `old_kek`.
    pub async fn rewrap_key(
        &self,
        holder: KeyHolder,
        id: &str,
        old_kek: &str,
        new: &StoredKey,
    ) -> Result<bool, StoreError> {
        let sql = match holder {
            KeyHolder::Certificate => {
                "UPDATE private_keys SET kek_id = $3, wrapped_dek = $4 WHERE cert_sha256 = $1 AND kek_id = $2"
            }
            KeyHolder::Request => {
                "UPDATE cert_requests SET kek_id = $3, wrapped_dek = $4 WHERE id = $1 AND kek_id = $2"
            }
        };
        let _w = self.writer().await;
        let n = sqlx::query(sql)
            .bind(id)
            .bind(old_kek)
            .bind(&new.kek_id)
            .bind(new.wrapped_dek.clone())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Record who did what to which certificate (key exports, imports).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        audit(&mut tx, actor, action, subject, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The audit log, newest first.
    pub async fn audit_log(
        &self,
        limit: i64,
    ) -> Result<Vec<(OffsetDateTime, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, subject FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    crate::ts(r.try_get(0)?)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                ))
            })
            .collect()
    }
}

/// A sealed key from three columns starting at `first` (kek_id, wrapped_dek, ciphertext).
fn stored_key(r: &sqlx::any::AnyRow, first: usize) -> Result<StoredKey, StoreError> {
    Ok(StoredKey {
        kek_id: r.try_get(first)?,
        wrapped_dek: r.try_get(first + 1)?,
        ciphertext: r.try_get(first + 2)?,
    })
}

pub(crate) async fn audit(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    subject: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, subject) VALUES ($1, $2, $3, $4)")
        .bind(now.unix_timestamp())
        .bind(actor)
        .bind(action)
        .bind(subject)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// ACME details of requests, and http-01 tokens in flight.
impl Store {
    /// Record how a request was ordered over ACME and, when the CA gave one, its
    /// renewal time (ARI), which then replaces the two-thirds rule.
    pub async fn set_acme_details(
        &self,
        id: &str,
        challenge: &str,
        renew_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE cert_requests SET acme_challenge = $2, ari_renew_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(challenge)
        .bind(renew_at.map(OffsetDateTime::unix_timestamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The challenge a request was ordered with and its ARI renewal time, if any.
    pub async fn acme_details(
        &self,
        id: &str,
    ) -> Result<(Option<String>, Option<OffsetDateTime>), StoreError> {
        let row =
            sqlx::query("SELECT acme_challenge, ari_renew_at FROM cert_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
        let at: Option<i64> = row.try_get("ari_renew_at")?;
        Ok((
            row.try_get("acme_challenge")?,
            at.map(crate::ts).transpose()?,
        ))
    }

    /// Record the CA's renewal time (ARI) of a request, or `None` for the two-thirds
    /// rule, and when to fetch its renewal information again (the CA's Retry-After).
    pub async fn set_ari(
        &self,
        id: &str,
        renew_at: Option<OffsetDateTime>,
        next_check: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "UPDATE cert_requests SET ari_renew_at = $2, ari_next_check = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(renew_at.map(OffsetDateTime::unix_timestamp))
        .bind(next_check.map(OffsetDateTime::unix_timestamp))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// ACME-issued requests, not renewed yet, whose renewal information is due to be
    /// fetched again at `now`; each claimed for `lease` seconds (one replica asks the
    /// CA). Their id, certificate SHA-256 and current ARI renewal time.
    pub async fn claim_ari_checks(
        &self,
        now: OffsetDateTime,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, Option<OffsetDateTime>)>, StoreError> {
        let t = now.unix_timestamp();
        let rows = sqlx::query(
            "SELECT id, certificate_sha256, ari_renew_at, ari_next_check FROM cert_requests \
             WHERE status = 'issued' AND issued_by = 'acme' AND renewed_by IS NULL \
             AND certificate_sha256 IS NOT NULL AND ari_next_check IS NOT NULL AND ari_next_check <= $1 \
             ORDER BY ari_next_check, id LIMIT $2",
        )
        .bind(t)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let sha: String = r.try_get("certificate_sha256")?;
            let at: Option<i64> = r.try_get("ari_renew_at")?;
            let next: i64 = r.try_get("ari_next_check")?;
            let _w = self.writer().await;
            let won = sqlx::query(
                "UPDATE cert_requests SET ari_next_check = $2 WHERE id = $1 AND ari_next_check = $3",
            )
            .bind(&id)
            .bind(t + lease)
            .bind(next)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if won {
                claimed.push((id, sha, at.map(crate::ts).transpose()?));
            }
        }
        Ok(claimed)
    }

    /// Hold the renewal of an issued request until `until` (the CA asked to wait):
    /// its renewal claim lasts until then.
    pub async fn defer_renewal(&self, id: &str, until: OffsetDateTime) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE cert_requests SET renewal_claimed_until = $2 WHERE id = $1")
            .bind(id)
            .bind(until.unix_timestamp())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record when an ACME order of a request may be sent again after a rate limit
    /// (`None`: at once).
    pub async fn set_acme_retry_at(
        &self,
        id: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE cert_requests SET acme_retry_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at.map(OffsetDateTime::unix_timestamp))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// When an ACME order of a request may be sent again, if the CA asked to wait.
    pub async fn acme_retry_at(&self, id: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let row = sqlx::query("SELECT acme_retry_at FROM cert_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let at: Option<i64> = row.try_get("acme_retry_at")?;
        at.map(crate::ts).transpose()
    }

    /// Keep an http-01 key authorization until `expires_at` (or until withdrawn).
    pub async fn put_http01_token(
        &self,
        token: &str,
        key_authorization: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("DELETE FROM acme_http01_tokens WHERE token = $1 OR expires_at < $2")
            .bind(token)
            .bind(OffsetDateTime::now_utc().unix_timestamp())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO acme_http01_tokens (token, key_authorization, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token)
        .bind(key_authorization)
        .bind(expires_at.unix_timestamp())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key authorization of a token in flight at `now`.
    pub async fn http01_token(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT key_authorization FROM acme_http01_tokens WHERE token = $1 AND expires_at >= $2",
        )
        .bind(token)
        .bind(now.unix_timestamp())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("key_authorization")).transpose()?)
    }

    /// Forget a token once its order no longer needs it.
    pub async fn delete_http01_token(&self, token: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("DELETE FROM acme_http01_tokens WHERE token = $1")
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
