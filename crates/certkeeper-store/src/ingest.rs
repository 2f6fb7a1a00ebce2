//! Applying one agent report: all of it in one transaction, or none of it.

use std::collections::HashSet;
use std::net::IpAddr;

use certkeeper_core::CertificateFacts;
use certkeeper_core::inventory::IngestSummary;
use sqlx::{Any, Row, Transaction};
use time::OffsetDateTime;

use crate::{Backend, Store, StoreError};

/// A certificate decoded by the server from presented DER.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub facts: CertificateFacts,
    pub der: Vec<u8>,
}

/// One observation of a report after the server decoded it.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    pub sni: Option<String>,
    pub seen_at: OffsetDateTime,
    pub result: SightingResult,
}

/// Who sent a report and what it says about itself.
#[derive(Debug, Clone)]
pub struct ReportMeta<'a> {
    pub agent_id: &'a str,
    pub report_id: &'a str,
    /// (address, port) pairs the agent is configured to watch.
    pub watched_endpoints: u64,
    pub hostname: &'a str,
    pub agent_version: &'a str,
}

/// What the endpoint presented, decoded.
#[derive(Debug, Clone)]
pub enum SightingResult {
    Tls {
        protocol: String,
        cipher: String,
        starttls: Option<String>,
        /// Leaf first; never empty.
        chain: Vec<ParsedCert>,
        /// Set when part of the presented chain could not be used.
        note: Option<String>,
    },
    /// A failure: `kind` is a [`certkeeper_core::FailureKind`] name or `bad_certificate`.
    Failed { kind: String, message: String },
}

impl SightingResult {
    /// Failures where the peer answered: worth an endpoint row even if it is new.
    fn peer_answered(&self) -> bool {
        match self {
            SightingResult::Tls { .. } => true,
            SightingResult::Failed { kind, .. } => !matches!(
                kind.as_str(),
                "refused" | "connect_timeout" | "network" | "dns"
            ),
        }
    }
}

const SELECT_ENDPOINT_SQLITE: &str =
    "SELECT id, sha256, last_seen FROM endpoints WHERE host = $1 AND ip = $2 AND port = $3";
const SELECT_ENDPOINT_PG: &str = "SELECT id, sha256, last_seen FROM endpoints WHERE host = $1 AND ip = $2 AND port = $3 FOR UPDATE";

impl Store {
    /// Apply a report from `agent_id`. Re-sending a report with the same id changes
    /// nothing and says so (`duplicate`). Concurrent ingests of overlapping reports on
    /// several servers end with one row per certificate and per endpoint.
    pub async fn ingest(
        &self,
        meta: &ReportMeta<'_>,
        sightings: &[Sighting],
        now: OffsetDateTime,
    ) -> Result<IngestSummary, StoreError> {
        // Lock order is fixed (certificates by SHA-256, then endpoints by key) so two
        // replicas ingesting overlapping reports cannot deadlock; a deadlock or
        // serialisation failure from elsewhere is retried.
        let mut order: Vec<&Sighting> = sightings.iter().collect();
        order.sort_by(|a, b| (&a.host, a.ip, a.port).cmp(&(&b.host, b.ip, b.port)));
        let mut certs: Vec<&ParsedCert> = sightings
            .iter()
            .filter_map(|s| match &s.result {
                SightingResult::Tls { chain, .. } => Some(chain.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        certs.sort_by_key(|c| c.facts.sha256);
        certs.dedup_by(|a, b| a.facts.sha256 == b.facts.sha256);

        let mut attempt = 0;
        loop {
            attempt += 1;
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            let result = self.ingest_tx(&mut tx, meta, &order, &certs, now).await;
            match result {
                Ok(summary) => {
                    if summary.duplicate {
                        tx.rollback().await?;
                    } else {
                        tx.commit().await?;
                    }
                    return Ok(summary);
                }
                Err(e) if attempt < 5 && retryable(&e) => {
                    let _ = tx.rollback().await;
                    tracing::debug!(attempt, "retrying ingest after a transient conflict");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ingest_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        meta: &ReportMeta<'_>,
        sightings: &[&Sighting],
        certs: &[&ParsedCert],
        now: OffsetDateTime,
    ) -> Result<IngestSummary, StoreError> {
        let agent_id = meta.agent_id;
        let mut summary = IngestSummary {
            observations: sightings.len() as u64,
            ..IngestSummary::default()
        };
        let claimed = sqlx::query(
            "INSERT INTO reports (agent_id, report_id, received_at, observations) VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id, report_id) DO NOTHING",
        )
        .bind(agent_id)
        .bind(meta.report_id)
        .bind(now.unix_timestamp())
        .bind(sightings.len() as i64)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            summary.duplicate = true;
            return Ok(summary);
        }

        for c in certs {
            summary.new_certificates += insert_certificate(tx, c, now).await?;
        }

        let select_endpoint = match self.backend {
            Backend::Sqlite => SELECT_ENDPOINT_SQLITE,
            Backend::Postgres => SELECT_ENDPOINT_PG,
        };
        let mut seen_keys = HashSet::new();
        for s in sightings {
            let ip = s.ip.to_string();
            if !seen_keys.insert((&s.host, s.ip, s.port)) {
                continue; // the same endpoint twice in one report: the first wins
            }
            let seen = s.seen_at.unix_timestamp();
            let inserted = if s.result.peer_answered() {
                sqlx::query(
                    "INSERT INTO endpoints (host, ip, port, first_seen, last_checked) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (host, ip, port) DO NOTHING RETURNING id",
                )
                .bind(&s.host)
                .bind(&ip)
                .bind(i64::from(s.port))
                .bind(seen)
                .fetch_optional(&mut **tx)
                .await?
            } else {
                None
            };
            let (endpoint_id, current, last_seen): (i64, Option<String>, Option<i64>) =
                match inserted {
                    Some(row) => {
                        summary.new_endpoints += 1;
                        (row.try_get(0)?, None, None)
                    }
                    None => {
                        let row = sqlx::query(select_endpoint)
                            .bind(&s.host)
                            .bind(&ip)
                            .bind(i64::from(s.port))
                            .fetch_optional(&mut **tx)
                            .await?;
                        match row {
                            Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                            None => continue, // a failure at an endpoint we never knew
                        }
                    }
                };
            match &s.result {
                SightingResult::Tls {
                    protocol,
                    cipher,
                    starttls,
                    chain,
                    note,
                } => {
                    summary.tls_endpoints += 1;
                    // An older report arriving late (from a spool) must not undo a newer one.
                    if last_seen.is_some_and(|l| l > seen) {
                        continue;
                    }
                    let leaf = chain[0].facts.sha256.to_string();
                    let replaced = current.as_deref().is_some_and(|c| c != leaf);
                    if current.as_deref() == Some(leaf.as_str()) {
                        sqlx::query("UPDATE served_history SET last_seen = $2 WHERE endpoint_id = $1 AND replaced_at IS NULL")
                            .bind(endpoint_id)
                            .bind(seen)
                            .execute(&mut **tx)
                            .await?;
                    } else {
                        if replaced {
                            summary.replaced += 1;
                            sqlx::query("UPDATE served_history SET replaced_at = $2 WHERE endpoint_id = $1 AND replaced_at IS NULL")
                                .bind(endpoint_id)
                                .bind(seen)
                                .execute(&mut **tx)
                                .await?;
                        }
                        sqlx::query("INSERT INTO served_history (endpoint_id, sha256, first_seen, last_seen, replaced_at) VALUES ($1, $2, $3, $3, NULL)")
                            .bind(endpoint_id)
                            .bind(&leaf)
                            .bind(seen)
                            .execute(&mut **tx)
                            .await?;
                    }
                    sqlx::query(
                        "UPDATE endpoints SET last_seen = $2, last_checked = $2, sha256 = $3, agent_id = $4, sni = $5, protocol = $6, cipher = $7, starttls = $8, last_error_kind = $9, last_error = $10 WHERE id = $1",
                    )
                    .bind(endpoint_id)
                    .bind(seen)
                    .bind(&leaf)
                    .bind(agent_id)
                    .bind(s.sni.as_deref())
                    .bind(protocol)
                    .bind(cipher)
                    .bind(starttls.as_deref())
                    .bind(note.as_ref().map(|_| "partial_chain"))
                    .bind(note.as_deref())
                    .execute(&mut **tx)
                    .await?;
                    sqlx::query("DELETE FROM endpoint_chain WHERE endpoint_id = $1")
                        .bind(endpoint_id)
                        .execute(&mut **tx)
                        .await?;
                    for (pos, c) in chain.iter().enumerate() {
                        sqlx::query("INSERT INTO endpoint_chain (endpoint_id, position, sha256) VALUES ($1, $2, $3)")
                            .bind(endpoint_id)
                            .bind(pos as i64)
                            .bind(c.facts.sha256.to_string())
                            .execute(&mut **tx)
                            .await?;
                    }
                }
                SightingResult::Failed { kind, message } => {
                    if kind == "bad_certificate" {
                        summary.rejected += 1;
                    }
                    sqlx::query(
                        "UPDATE endpoints SET last_checked = $2, agent_id = $3, last_error_kind = $4, last_error = $5 WHERE id = $1 AND last_checked <= $2",
                    )
                    .bind(endpoint_id)
                    .bind(seen)
                    .bind(agent_id)
                    .bind(kind)
                    .bind(message)
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }

        sqlx::query(
            "UPDATE agents SET last_contact = $2, watched_endpoints = $3, hostname = $4, version = $5 WHERE id = $1",
        )
        .bind(agent_id)
        .bind(now.unix_timestamp())
        .bind(meta.watched_endpoints as i64)
        .bind(meta.hostname)
        .bind(meta.agent_version)
        .execute(&mut **tx)
        .await?;
        Ok(summary)
    }
}

async fn insert_certificate(
    tx: &mut Transaction<'static, Any>,
    c: &ParsedCert,
    now: OffsetDateTime,
) -> Result<u64, StoreError> {
    let f = &c.facts;
    let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let n = sqlx::query(
        "INSERT INTO certificates (sha256, der, sha1, serial, subject, common_name, sans, issuer, not_before, not_after, key_type, key_bits, key_curve, signature_algorithm, is_ca, self_signed, subject_key_id, authority_key_id, ocsp_urls, ca_issuer_urls, crl_urls, first_seen) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(f.sha256.to_string())
    .bind(c.der.clone())
    .bind(&f.sha1)
    .bind(f.serial.as_str())
    .bind(&f.subject)
    .bind(f.common_name.as_deref())
    .bind(json(&f.sans))
    .bind(&f.issuer)
    .bind(f.not_before.unix_timestamp())
    .bind(f.not_after.unix_timestamp())
    .bind(f.key.key_type.as_str())
    .bind(f.key.bits.map(i64::from))
    .bind(f.key.curve.as_deref())
    .bind(&f.signature_algorithm)
    .bind(i64::from(f.is_ca))
    .bind(i64::from(f.self_signed))
    .bind(f.subject_key_id.as_deref())
    .bind(f.authority_key_id.as_deref())
    .bind(json(&f.ocsp_urls))
    .bind(json(&f.ca_issuer_urls))
    .bind(json(&f.crl_urls))
    .bind(now.unix_timestamp())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(n)
}

/// Deadlocks, serialisation failures and SQLite busy errors are worth another try.
fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(
                db.code().as_deref(),
                Some("40P01" | "40001" | "5" | "6" | "517")
            )
        }
        _ => false,
    }
}
