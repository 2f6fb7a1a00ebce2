//! Applying one agent report: all of it in one transaction, or none of it.

use std::collections::{HashMap, HashSet};
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

        // Certificates, many rows per statement.
        for chunk in certs.chunks(250) {
            let rows: Vec<Vec<Val>> = chunk.iter().map(|c| certificate_row(c, now)).collect();
            summary.new_certificates += Batch::new(
                self.backend,
                "INSERT INTO certificates (sha256, der, sha1, serial, subject, common_name, sans, issuer, not_before, not_after, key_type, key_bits, key_curve, signature_algorithm, is_ca, self_signed, subject_key_id, authority_key_id, ocsp_urls, ca_issuer_urls, crl_urls, first_seen) VALUES ",
                rows,
                " ON CONFLICT (sha256) DO NOTHING",
            )
            .execute(tx)
            .await?;
        }

        // The same endpoint twice in one report: the first wins.
        let mut seen_keys = HashSet::new();
        let unique: Vec<&Sighting> = sightings
            .iter()
            .copied()
            .filter(|s| seen_keys.insert((&s.host, s.ip, s.port)))
            .collect();

        // New endpoints are inserted whole, many per statement; the rows that come back
        // are the ones that did not exist.
        let mut new_ids: HashMap<(String, String, i64), i64> = HashMap::new();
        let insertable: Vec<&Sighting> = unique
            .iter()
            .copied()
            .filter(|s| s.result.peer_answered())
            .collect();
        for chunk in insertable.chunks(500) {
            let rows = chunk.iter().map(|s| endpoint_row(s, agent_id)).collect();
            let returned = Batch::new(
                self.backend,
                "INSERT INTO endpoints (host, ip, port, first_seen, last_seen, last_checked, sha256, agent_id, sni, protocol, cipher, starttls, last_error_kind, last_error) VALUES ",
                rows,
                " ON CONFLICT (host, ip, port) DO NOTHING RETURNING id, host, ip, port",
            )
            .fetch(tx)
            .await?;
            for r in returned {
                new_ids.insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?), r.try_get(0)?);
            }
        }
        summary.new_endpoints = new_ids.len() as u64;

        let select_endpoint = match self.backend {
            Backend::Sqlite => SELECT_ENDPOINT_SQLITE,
            Backend::Postgres => SELECT_ENDPOINT_PG,
        };
        let mut history_rows: Vec<Vec<Val>> = Vec::new();
        let mut chain_rows: Vec<Vec<Val>> = Vec::new();
        let chain_of = |id: i64, chain: &[ParsedCert]| -> Vec<Vec<Val>> {
            chain
                .iter()
                .enumerate()
                .map(|(pos, c)| {
                    vec![
                        Val::Int(id),
                        Val::Int(pos as i64),
                        Val::Text(c.facts.sha256.to_string()),
                    ]
                })
                .collect()
        };
        for s in unique {
            let ip = s.ip.to_string();
            let seen = s.seen_at.unix_timestamp();
            let key = (s.host.clone(), ip.clone(), i64::from(s.port));
            if let Some(&id) = new_ids.get(&key) {
                if let SightingResult::Tls { chain, .. } = &s.result {
                    summary.tls_endpoints += 1;
                    history_rows.push(history_row(id, &chain[0].facts.sha256.to_string(), seen));
                    chain_rows.extend(chain_of(id, chain));
                } else if matches!(&s.result, SightingResult::Failed { kind, .. } if kind == "bad_certificate")
                {
                    summary.rejected += 1;
                }
                continue;
            }
            let row = sqlx::query(select_endpoint)
                .bind(&s.host)
                .bind(&ip)
                .bind(i64::from(s.port))
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else {
                continue; // a failure at an endpoint we never knew
            };
            let (endpoint_id, current, last_seen): (i64, Option<String>, Option<i64>) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
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
                    if current.as_deref() == Some(leaf.as_str()) {
                        sqlx::query("UPDATE served_history SET last_seen = $2 WHERE endpoint_id = $1 AND replaced_at IS NULL")
                            .bind(endpoint_id)
                            .bind(seen)
                            .execute(&mut **tx)
                            .await?;
                    } else {
                        if current.is_some() {
                            summary.replaced += 1;
                            sqlx::query("UPDATE served_history SET replaced_at = $2 WHERE endpoint_id = $1 AND replaced_at IS NULL")
                                .bind(endpoint_id)
                                .bind(seen)
                                .execute(&mut **tx)
                                .await?;
                        }
                        history_rows.push(history_row(endpoint_id, &leaf, seen));
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
                    chain_rows.extend(chain_of(endpoint_id, chain));
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
        for chunk in history_rows.chunks(1000) {
            Batch::new(
                self.backend,
                "INSERT INTO served_history (endpoint_id, sha256, first_seen, last_seen, replaced_at) VALUES ",
                chunk.to_vec(),
                "",
            )
            .execute(tx)
            .await?;
        }
        for chunk in chain_rows.chunks(1000) {
            Batch::new(
                self.backend,
                "INSERT INTO endpoint_chain (endpoint_id, position, sha256) VALUES ",
                chunk.to_vec(),
                "",
            )
            .execute(tx)
            .await?;
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

/// A value bound into a batched statement.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Blob(Vec<u8>),
}

/// `PREFIX ($1, $2, …), ($n, …) SUFFIX` over rows of equal width.
pub(crate) struct Batch {
    sql: String,
    rows: Vec<Vec<Val>>,
}

impl Batch {
    /// PostgreSQL gets `$n`; SQLite gets anonymous `?`, because sqlx looks every
    /// numbered parameter up by name, which is quadratic in SQLite for wide statements.
    pub(crate) fn new(backend: Backend, prefix: &str, rows: Vec<Vec<Val>>, suffix: &str) -> Self {
        let mut sql = String::from(prefix);
        let mut n = 0;
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for j in 0..row.len() {
                if j > 0 {
                    sql.push_str(", ");
                }
                n += 1;
                match backend {
                    Backend::Postgres => sql.push_str(&format!("${n}")),
                    Backend::Sqlite => sql.push('?'),
                }
            }
            sql.push(')');
        }
        sql.push_str(suffix);
        Batch { sql, rows }
    }

    fn query(self) -> sqlx::query::Query<'static, Any, sqlx::any::AnyArguments> {
        // Only fixed fragments and `$n` placeholders are in the text.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for v in self.rows.into_iter().flatten() {
            q = match v {
                Val::Text(s) => q.bind(s),
                Val::OptText(s) => q.bind(s),
                Val::Int(i) => q.bind(i),
                Val::OptInt(i) => q.bind(i),
                Val::Blob(b) => q.bind(b),
            };
        }
        q
    }

    pub(crate) async fn execute(
        self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<u64, StoreError> {
        if self.rows.is_empty() {
            return Ok(0);
        }
        Ok(self.query().execute(&mut **tx).await?.rows_affected())
    }

    async fn fetch(
        self,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.query().fetch_all(&mut **tx).await?)
    }
}

fn history_row(endpoint_id: i64, sha256: &str, seen: i64) -> Vec<Val> {
    vec![
        Val::Int(endpoint_id),
        Val::Text(sha256.to_string()),
        Val::Int(seen),
        Val::Int(seen),
        Val::OptInt(None),
    ]
}

fn endpoint_row(s: &Sighting, agent_id: &str) -> Vec<Val> {
    let seen = s.seen_at.unix_timestamp();
    let mut row = vec![
        Val::Text(s.host.clone()),
        Val::Text(s.ip.to_string()),
        Val::Int(i64::from(s.port)),
        Val::Int(seen),
    ];
    match &s.result {
        SightingResult::Tls {
            protocol,
            cipher,
            starttls,
            chain,
            note,
        } => row.extend([
            Val::OptInt(Some(seen)),
            Val::Int(seen),
            Val::OptText(Some(chain[0].facts.sha256.to_string())),
            Val::Text(agent_id.to_string()),
            Val::OptText(s.sni.clone()),
            Val::OptText(Some(protocol.clone())),
            Val::OptText(Some(cipher.clone())),
            Val::OptText(starttls.clone()),
            Val::OptText(note.as_ref().map(|_| "partial_chain".to_string())),
            Val::OptText(note.clone()),
        ]),
        SightingResult::Failed { kind, message } => row.extend([
            Val::OptInt(None),
            Val::Int(seen),
            Val::OptText(None),
            Val::Text(agent_id.to_string()),
            Val::OptText(s.sni.clone()),
            Val::OptText(None),
            Val::OptText(None),
            Val::OptText(None),
            Val::OptText(Some(kind.clone())),
            Val::OptText(Some(message.clone())),
        ]),
    }
    row
}

pub(crate) fn certificate_row(c: &ParsedCert, now: OffsetDateTime) -> Vec<Val> {
    let f = &c.facts;
    let json =
        |v: &Vec<String>| Val::Text(serde_json::to_string(v).unwrap_or_else(|_| "[]".into()));
    vec![
        Val::Text(f.sha256.to_string()),
        Val::Blob(c.der.clone()),
        Val::Text(f.sha1.clone()),
        Val::Text(f.serial.to_string()),
        Val::Text(f.subject.clone()),
        Val::OptText(f.common_name.clone()),
        json(&f.sans),
        Val::Text(f.issuer.clone()),
        Val::Int(f.not_before.unix_timestamp()),
        Val::Int(f.not_after.unix_timestamp()),
        Val::Text(f.key.key_type.as_str().to_string()),
        Val::OptInt(f.key.bits.map(i64::from)),
        Val::OptText(f.key.curve.clone()),
        Val::Text(f.signature_algorithm.clone()),
        Val::Int(i64::from(f.is_ca)),
        Val::Int(i64::from(f.self_signed)),
        Val::OptText(f.subject_key_id.clone()),
        Val::OptText(f.authority_key_id.clone()),
        json(&f.ocsp_urls),
        json(&f.ca_issuer_urls),
        json(&f.crl_urls),
        Val::Int(now.unix_timestamp()),
    ]
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
