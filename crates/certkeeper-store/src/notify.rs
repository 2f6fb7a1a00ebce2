//! Notifications and tickets: certificate owner/tags/retirement, the candidates of a
//! notification run (with where they are served and whether they count as renewed),
//! messages claimed once, deliveries and their attempts, ticket work claimed per key
//! with a lease, and the local ticket records.

use std::collections::HashMap;
use std::net::IpAddr;

use certkeeper_core::notify::{CertView, ServedAt};
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use crate::{Backend, Store, StoreError, get, opt_ts, ts};

/// Owner, tags and retirement of a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertMeta {
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub retired_at: Option<OffsetDateTime>,
}

/// One page of candidates and where the next starts.
#[derive(Debug, Clone)]
pub struct CandidatePage {
    pub items: Vec<CertView>,
    /// `(not_after, sha256)` of the last item, for the next call.
    pub next: Option<(i64, String)>,
}

/// A delivery being queued.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub policy: String,
    pub channel: String,
    pub recipient: String,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: String,
    pub policy: String,
    pub channel: String,
    pub recipient: String,
    pub payload: String,
    pub state: String,
    pub attempts: u32,
    pub run_after: OffsetDateTime,
    pub lease_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub sent_at: Option<OffsetDateTime>,
}

/// One logged attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub delivery_id: String,
    pub attempt: u32,
    pub at: OffsetDateTime,
    pub outcome: String,
    pub error: Option<String>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Sent,
    Retry { at: OffsetDateTime, error: String },
    Failed { error: String },
}

/// Ticket work just claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketWork {
    pub system: String,
    pub key: String,
    /// JSON of the action.
    pub action: String,
    pub version: i64,
    pub attempts: u32,
    pub lease_id: String,
}

/// How a piece of ticket work ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOutcome {
    Done,
    Retry { at: OffsetDateTime, error: String },
    Failed { error: String },
}

/// The local record of one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub system: String,
    pub key: String,
    pub kind: String,
    pub key_text: String,
    pub ticket_id: String,
    pub number: String,
    pub status: String,
    pub raw_status: String,
    pub priority: String,
    pub ip: String,
    pub serial: String,
    pub domain: Option<String>,
    pub sha256: Option<String>,
    pub last_action: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const DELIVERY_COLUMNS: &str = "id, policy, channel, recipient, payload, state, attempts, run_after, lease_id, last_error, created_at, sent_at";
const TICKET_COLUMNS: &str = "system, ticket_key, kind, key_text, ticket_id, number, status, raw_status, priority, ip, serial, domain, sha256, last_action, created_at, updated_at";

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: get(r, "id")?,
        policy: get(r, "policy")?,
        channel: get(r, "channel")?,
        recipient: get(r, "recipient")?,
        payload: get(r, "payload")?,
        state: get(r, "state")?,
        attempts: get::<i64>(r, "attempts")? as u32,
        run_after: ts(get(r, "run_after")?)?,
        lease_id: get(r, "lease_id")?,
        last_error: get(r, "last_error")?,
        created_at: ts(get(r, "created_at")?)?,
        sent_at: opt_ts(get(r, "sent_at")?)?,
    })
}

fn ticket_from_row(r: &AnyRow) -> Result<TicketRecord, StoreError> {
    Ok(TicketRecord {
        system: get(r, "system")?,
        key: get(r, "ticket_key")?,
        kind: get(r, "kind")?,
        key_text: get(r, "key_text")?,
        ticket_id: get(r, "ticket_id")?,
        number: get(r, "number")?,
        status: get(r, "status")?,
        raw_status: get(r, "raw_status")?,
        priority: get(r, "priority")?,
        ip: get(r, "ip")?,
        serial: get(r, "serial")?,
        domain: get(r, "domain")?,
        sha256: get(r, "sha256")?,
        last_action: get(r, "last_action")?,
        created_at: ts(get(r, "created_at")?)?,
        updated_at: ts(get(r, "updated_at")?)?,
    })
}

fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_list(s: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Names a certificate covers, lower case.
fn name_set(cn: &Option<String>, sans: &[String]) -> Vec<String> {
    let mut v: Vec<String> = cn
        .iter()
        .chain(sans)
        .map(|s| s.to_ascii_lowercase())
        .collect();
    v.sort();
    v.dedup();
    v
}

impl Store {
    /// Set the owner, tags and retirement of a certificate.
    pub async fn set_certificate_meta(
        &self,
        sha256: &str,
        meta: &CertMeta,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let exists = sqlx::query("SELECT 1 AS one FROM certificates WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let tags = serde_json::to_string(&meta.tags).expect("strings serialise");
        sqlx::query(
            "INSERT INTO certificate_meta (sha256, owner, tags, retired_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (sha256) DO UPDATE SET owner = $2, tags = $3, retired_at = $4, updated_at = $5",
        )
        .bind(sha256)
        .bind(meta.owner.as_deref())
        .bind(tags)
        .bind(meta.retired_at.map(|t| t.unix_timestamp()))
        .bind(now.unix_timestamp())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Owner, tags and retirement of a certificate (defaults when never set).
    pub async fn certificate_meta(&self, sha256: &str) -> Result<CertMeta, StoreError> {
        let row =
            sqlx::query("SELECT owner, tags, retired_at FROM certificate_meta WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Ok(CertMeta::default()),
            Some(r) => Ok(CertMeta {
                owner: get(&r, "owner")?,
                tags: json_list(&get::<String>(&r, "tags")?)?,
                retired_at: opt_ts(get(&r, "retired_at")?)?,
            }),
        }
    }

    /// Leaf certificates expiring by `cutoff` (expired ones included), in
    /// `(not_after, sha256)` order from `after`, at most `limit`, each with its
    /// owner, tags, retirement, the endpoints serving it now, and the certificate
    /// that replaced it when it counts as renewed: every endpoint that ever served it
    /// now serves a later certificate covering all its names, or (never served now)
    /// a later certificate covering its names was imported or issued.
    pub async fn notify_candidates(
        &self,
        cutoff: OffsetDateTime,
        after: Option<&(i64, String)>,
        limit: i64,
    ) -> Result<CandidatePage, StoreError> {
        let cols = "c.sha256, c.serial, c.common_name, c.sans, c.issuer, c.not_after";
        let rows = match after {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {cols} FROM certificates c WHERE c.not_after <= $1 AND c.is_ca = 0 \
                     ORDER BY c.not_after, c.sha256 LIMIT $2"
                )))
                .bind(cutoff.unix_timestamp())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some((na, sha)) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {cols} FROM certificates c WHERE c.not_after <= $1 AND c.is_ca = 0 \
                     AND (c.not_after > $2 OR (c.not_after = $2 AND c.sha256 > $3)) \
                     ORDER BY c.not_after, c.sha256 LIMIT $4"
                )))
                .bind(cutoff.unix_timestamp())
                .bind(*na)
                .bind(sha.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let sans = json_list(&get::<String>(r, "sans")?)?;
            items.push(CertView {
                sha256: get(r, "sha256")?,
                serial: get(r, "serial")?,
                common_name: get(r, "common_name")?,
                sans,
                issuer: get(r, "issuer")?,
                not_after: ts(get(r, "not_after")?)?,
                owner: None,
                tags: Vec::new(),
                retired: false,
                renewed_by: None,
                served_at: Vec::new(),
            });
        }
        let next = items
            .last()
            .map(|c| (c.not_after.unix_timestamp(), c.sha256.clone()));
        self.complete_views(&mut items).await?;
        Ok(CandidatePage { items, next })
    }

    /// One certificate as the notification rules see it.
    pub async fn notify_view(&self, sha256: &str) -> Result<CertView, StoreError> {
        let r = sqlx::query(
            "SELECT sha256, serial, common_name, sans, issuer, not_after FROM certificates WHERE sha256 = $1",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut v = vec![CertView {
            sha256: get(&r, "sha256")?,
            serial: get(&r, "serial")?,
            common_name: get(&r, "common_name")?,
            sans: json_list(&get::<String>(&r, "sans")?)?,
            issuer: get(&r, "issuer")?,
            not_after: ts(get(&r, "not_after")?)?,
            owner: None,
            tags: Vec::new(),
            retired: false,
            renewed_by: None,
            served_at: Vec::new(),
        }];
        self.complete_views(&mut v).await?;
        Ok(v.remove(0))
    }

    async fn complete_views(&self, items: &mut [CertView]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let shas: Vec<&str> = items.iter().map(|c| c.sha256.as_str()).collect();
        let ph = placeholders(1, shas.len());
        // Owner, tags, retirement; the team of a managed certificate is its owner
        // unless one was set.
        let sql = format!(
            "SELECT c.sha256, m.owner, m.tags, m.retired_at, mc.team FROM certificates c \
             LEFT JOIN certificate_meta m ON m.sha256 = c.sha256 \
             LEFT JOIN managed_certificates mc ON mc.sha256 = c.sha256 WHERE c.sha256 IN ({ph})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in &shas {
            q = q.bind(*s);
        }
        let mut meta: HashMap<String, (Option<String>, Vec<String>, bool)> = HashMap::new();
        for r in q.fetch_all(&self.pool).await? {
            let owner: Option<String> = get(&r, "owner")?;
            let team: Option<String> = get(&r, "team")?;
            let tags: Option<String> = get(&r, "tags")?;
            let retired: Option<i64> = get(&r, "retired_at")?;
            meta.insert(
                get(&r, "sha256")?,
                (
                    owner.or(team),
                    tags.map(|t| json_list(&t)).transpose()?.unwrap_or_default(),
                    retired.is_some(),
                ),
            );
        }
        // Where each is served now.
        let sql = format!(
            "SELECT sha256, host, ip, port FROM endpoints WHERE sha256 IN ({ph}) ORDER BY host, ip, port"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in &shas {
            q = q.bind(*s);
        }
        let mut served: HashMap<String, Vec<ServedAt>> = HashMap::new();
        for r in q.fetch_all(&self.pool).await? {
            let ip: String = get(&r, "ip")?;
            let Ok(ip) = ip.parse::<IpAddr>() else {
                continue;
            };
            served
                .entry(get(&r, "sha256")?)
                .or_default()
                .push(ServedAt {
                    host: get(&r, "host")?,
                    ip,
                    port: get::<i64>(&r, "port")? as u16,
                });
        }
        // What the endpoints that ever served each one serve now.
        let sql = format!(
            "SELECT DISTINCT h.sha256 AS old, e.id AS endpoint, e.sha256 AS now_sha, c.not_after, c.common_name, c.sans \
             FROM served_history h JOIN endpoints e ON e.id = h.endpoint_id \
             LEFT JOIN certificates c ON c.sha256 = e.sha256 WHERE h.sha256 IN ({ph})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in &shas {
            q = q.bind(*s);
        }
        type Now = (Option<String>, Option<i64>, Vec<String>);
        let mut history: HashMap<String, Vec<Now>> = HashMap::new();
        for r in q.fetch_all(&self.pool).await? {
            let cn: Option<String> = get(&r, "common_name")?;
            let sans: Option<String> = get(&r, "sans")?;
            let sans = sans.map(|s| json_list(&s)).transpose()?.unwrap_or_default();
            history.entry(get(&r, "old")?).or_default().push((
                get(&r, "now_sha")?,
                get(&r, "not_after")?,
                name_set(&cn, &sans),
            ));
        }
        for c in items.iter_mut() {
            if let Some((owner, tags, retired)) = meta.remove(&c.sha256) {
                c.owner = owner;
                c.tags = tags;
                c.retired = retired;
            }
            c.served_at = served.remove(&c.sha256).unwrap_or_default();
            if !c.served_at.is_empty() {
                continue;
            }
            let names = name_set(&c.common_name, &c.sans);
            let covers = |other: &[String]| names.iter().all(|n| other.contains(n));
            let na = c.not_after.unix_timestamp();
            if let Some(h) = history.get(&c.sha256) {
                let replaced: Option<Vec<&str>> = h
                    .iter()
                    .map(|(sha, not_after, other)| match (sha, not_after) {
                        (Some(sha), Some(t)) if *t > na && covers(other) => Some(sha.as_str()),
                        _ => None,
                    })
                    .collect();
                if let Some(by) = replaced
                    && let Some(first) = by.first()
                {
                    c.renewed_by = Some((*first).to_string());
                    continue;
                }
            }
            c.renewed_by = self.imported_successor(c, &names).await?;
        }
        Ok(())
    }

    /// A later imported or issued certificate covering every name of `c`.
    async fn imported_successor(
        &self,
        c: &CertView,
        names: &[String],
    ) -> Result<Option<String>, StoreError> {
        let Some(first) = names.first() else {
            return Ok(None);
        };
        // Candidates share the first name as CN or SAN; the SAN list is JSON text.
        let like = format!("%\"{}\"%", first.replace(['%', '_'], ""));
        let rows = sqlx::query(
            "SELECT c.sha256, c.common_name, c.sans FROM certificates c JOIN managed_certificates m ON m.sha256 = c.sha256 \
             WHERE c.not_after > $1 AND c.sha256 <> $2 AND (LOWER(c.common_name) = $3 OR LOWER(c.sans) LIKE $4) \
             ORDER BY c.not_after DESC LIMIT 20",
        )
        .bind(c.not_after.unix_timestamp())
        .bind(c.sha256.as_str())
        .bind(first.as_str())
        .bind(like)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let cn: Option<String> = get(&r, "common_name")?;
            let sans = json_list(&get::<String>(&r, "sans")?)?;
            let other = name_set(&cn, &sans);
            if names.iter().all(|n| other.contains(n)) {
                return Ok(Some(get(&r, "sha256")?));
            }
        }
        Ok(None)
    }

    /// Claim messages and queue the delivery that carries them, in one transaction.
    /// `keys` are the message keys this delivery would carry; those already claimed
    /// (by an earlier run, or another replica) are skipped. `render` gets the indexes
    /// of the keys claimed now and returns the payload; nothing is queued when no key
    /// is new. Returns those indexes.
    pub async fn enqueue_delivery(
        &self,
        d: &NewDelivery,
        keys: &[String],
        now: OffsetDateTime,
        render: impl FnOnce(&[usize]) -> String,
    ) -> Result<Vec<usize>, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let mut claimed_keys = std::collections::HashSet::new();
        // Many rows a statement; RETURNING names the ones this call inserted.
        for chunk in keys.chunks(300) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, $1, $2, $3, $4)", i + 5))
                .collect();
            let sql = format!(
                "INSERT INTO notify_messages (message_key, channel, recipient, delivery_id, created_at) VALUES {} \
                 ON CONFLICT (message_key, channel, recipient) DO NOTHING RETURNING message_key",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(d.channel.as_str())
                .bind(d.recipient.as_str())
                .bind(d.id.as_str())
                .bind(now.unix_timestamp());
            for k in chunk {
                q = q.bind(k.as_str());
            }
            for r in q.fetch_all(&mut *tx).await? {
                claimed_keys.insert(get::<String>(&r, "message_key")?);
            }
        }
        let claimed: Vec<usize> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| claimed_keys.contains(k.as_str()))
            .map(|(i, _)| i)
            .collect();
        if claimed.is_empty() {
            tx.rollback().await?;
            return Ok(claimed);
        }
        let payload = render(&claimed);
        sqlx::query(
            "INSERT INTO notify_deliveries (id, policy, channel, recipient, payload, state, attempts, run_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
        )
        .bind(d.id.as_str())
        .bind(d.policy.as_str())
        .bind(d.channel.as_str())
        .bind(d.recipient.as_str())
        .bind(payload)
        .bind(now.unix_timestamp())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// When each of these message keys was claimed (for any channel), if it was.
    pub async fn claimed_messages(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, OffsetDateTime>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT message_key, MIN(created_at) AS at FROM notify_messages WHERE message_key IN ({}) GROUP BY message_key",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for k in chunk {
                q = q.bind(k.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(get(&r, "message_key")?, ts(get(&r, "at")?)?);
            }
        }
        Ok(out)
    }

    /// Claim due deliveries for `lease_seconds`; an expired lease is claimable again.
    pub async fn claim_deliveries(
        &self,
        lease_id: &str,
        now: OffsetDateTime,
        lease_seconds: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let t = now.unix_timestamp();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE notify_deliveries SET state = 'leased', lease_id = $2, lease_until = $3, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM notify_deliveries WHERE \
             ((state = 'pending' AND run_after <= $1) OR (state = 'leased' AND lease_until < $1)) \
             ORDER BY run_after, id LIMIT $4{lock}) \
             AND ((state = 'pending' AND run_after <= $1) OR (state = 'leased' AND lease_until < $1))"
        );
        {
            let _w = self.writer().await;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(t)
                .bind(lease_id)
                .bind(t + lease_seconds)
                .bind(limit)
                .execute(&self.pool)
                .await?;
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE lease_id = $1 AND state = 'leased' ORDER BY run_after, id"
        )))
        .bind(lease_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Record an attempt's outcome; only the holder of the lease may.
    pub async fn finish_delivery(
        &self,
        id: &str,
        lease_id: &str,
        outcome: &DeliveryOutcome,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT attempts FROM notify_deliveries WHERE id = $1 AND lease_id = $2 AND state = 'leased'",
        )
        .bind(id)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::LeaseLost)?;
        let attempt: i64 = get(&row, "attempts")?;
        let t = now.unix_timestamp();
        let (state, run_after, error, sent_at, logged) = match outcome {
            DeliveryOutcome::Sent => ("sent", t, None, Some(t), "sent"),
            DeliveryOutcome::Retry { at, error } => (
                "pending",
                at.unix_timestamp(),
                Some(error.as_str()),
                None,
                "retry",
            ),
            DeliveryOutcome::Failed { error } => {
                ("failed", t, Some(error.as_str()), None, "failed")
            }
        };
        sqlx::query(
            "UPDATE notify_deliveries SET state = $2, run_after = $3, last_error = $4, sent_at = $5, lease_id = NULL, lease_until = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(run_after)
        .bind(error)
        .bind(sent_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO notify_attempts (delivery_id, attempt, at, outcome, error) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(id)
        .bind(attempt)
        .bind(t)
        .bind(logged)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deliveries, newest first, optionally of one state.
    pub async fn deliveries(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = match state {
            Some(s) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE state = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
            )))
            .bind(s)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries ORDER BY created_at DESC, id DESC LIMIT $1"
            )))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(delivery_from_row).collect()
    }

    /// The attempts of a delivery, in order.
    pub async fn delivery_attempts(&self, id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, attempt, at, outcome, error FROM notify_attempts WHERE delivery_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    delivery_id: get(r, "delivery_id")?,
                    attempt: get::<i64>(r, "attempt")? as u32,
                    at: ts(get(r, "at")?)?,
                    outcome: get(r, "outcome")?,
                    error: get(r, "error")?,
                })
            })
            .collect()
    }

    /// Ask for ticket work on a key: the action replaces any earlier one not yet
    /// done; work in progress sees the new version when it finishes and runs again.
    pub async fn queue_ticket_work(
        &self,
        system: &str,
        key: &str,
        action: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.queue_ticket_work_many(&[(system, key, action)], now)
            .await
    }

    /// [`Store::queue_ticket_work`] for many keys, in one transaction.
    pub async fn queue_ticket_work_many(
        &self,
        items: &[(&str, &str, &str)],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        for (system, key, action) in items {
            sqlx::query(
            "INSERT INTO ticket_work (system, ticket_key, action, version, state, attempts, run_after, updated_at) \
             VALUES ($1, $2, $3, 1, 'pending', 0, $4, $4) \
             ON CONFLICT (system, ticket_key) DO UPDATE SET action = $3, version = ticket_work.version + 1, \
             state = CASE WHEN ticket_work.state = 'leased' THEN 'leased' ELSE 'pending' END, \
             attempts = CASE WHEN ticket_work.state = 'leased' THEN ticket_work.attempts ELSE 0 END, \
             run_after = CASE WHEN ticket_work.state = 'pending' AND ticket_work.run_after > $4 THEN ticket_work.run_after ELSE $4 END, \
             updated_at = $4",
            )
            .bind(*system)
            .bind(*key)
            .bind(*action)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claim due ticket work (one row per key, so a key is never worked on twice at once).
    pub async fn claim_ticket_work(
        &self,
        lease_id: &str,
        now: OffsetDateTime,
        lease_seconds: i64,
        limit: i64,
    ) -> Result<Vec<TicketWork>, StoreError> {
        let t = now.unix_timestamp();
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let due =
            "((state = 'pending' AND run_after <= $1) OR (state = 'leased' AND lease_until < $1))";
        let sql = format!(
            "UPDATE ticket_work SET state = 'leased', lease_id = $2, lease_until = $3, attempts = attempts + 1 \
             WHERE (system, ticket_key) IN (SELECT system, ticket_key FROM ticket_work WHERE {due} \
             ORDER BY run_after, system, ticket_key LIMIT $4{lock}) AND {due}"
        );
        {
            let _w = self.writer().await;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(t)
                .bind(lease_id)
                .bind(t + lease_seconds)
                .bind(limit)
                .execute(&self.pool)
                .await?;
        }
        let rows = sqlx::query(
            "SELECT system, ticket_key, action, version, attempts FROM ticket_work WHERE lease_id = $1 AND state = 'leased' \
             ORDER BY run_after, system, ticket_key",
        )
        .bind(lease_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TicketWork {
                    system: get(r, "system")?,
                    key: get(r, "ticket_key")?,
                    action: get(r, "action")?,
                    version: get(r, "version")?,
                    attempts: get::<i64>(r, "attempts")? as u32,
                    lease_id: lease_id.to_string(),
                })
            })
            .collect()
    }

    /// Finish claimed work. A newer action queued meanwhile stays pending.
    pub async fn finish_ticket_work(
        &self,
        w: &TicketWork,
        outcome: &WorkOutcome,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _g = self.writer().await;
        let t = now.unix_timestamp();
        let (state, run_after, error) = match outcome {
            WorkOutcome::Done => ("done", t, None),
            WorkOutcome::Retry { at, error } => {
                ("pending", at.unix_timestamp(), Some(error.as_str()))
            }
            WorkOutcome::Failed { error } => ("failed", t, Some(error.as_str())),
        };
        let n = sqlx::query(
            "UPDATE ticket_work SET \
             state = CASE WHEN version = $4 THEN $5 ELSE 'pending' END, \
             run_after = CASE WHEN version = $4 THEN $6 ELSE $7 END, \
             attempts = CASE WHEN version = $4 THEN attempts ELSE 0 END, \
             last_error = $8, lease_id = NULL, lease_until = NULL, updated_at = $7 \
             WHERE system = $1 AND ticket_key = $2 AND lease_id = $3",
        )
        .bind(w.system.as_str())
        .bind(w.key.as_str())
        .bind(w.lease_id.as_str())
        .bind(w.version)
        .bind(state)
        .bind(run_after)
        .bind(t)
        .bind(error)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// Pending or failed ticket work, for the operator.
    pub async fn ticket_work_state(
        &self,
        system: &str,
        key: &str,
    ) -> Result<Option<(String, u32, Option<String>)>, StoreError> {
        let r = sqlx::query(
            "SELECT state, attempts, last_error FROM ticket_work WHERE system = $1 AND ticket_key = $2",
        )
        .bind(system)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok((
                get(&r, "state")?,
                get::<i64>(&r, "attempts")? as u32,
                get(&r, "last_error")?,
            ))
        })
        .transpose()
    }

    /// Insert or update the local record of a ticket.
    pub async fn upsert_ticket(&self, t: &TicketRecord) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO tickets (system, ticket_key, kind, key_text, ticket_id, number, status, raw_status, priority, ip, serial, domain, sha256, last_action, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (system, ticket_key) DO UPDATE SET ticket_id = $5, number = $6, status = $7, raw_status = $8, \
             priority = $9, sha256 = COALESCE($13, tickets.sha256), last_action = $14, updated_at = $16",
        )
        .bind(t.system.as_str())
        .bind(t.key.as_str())
        .bind(t.kind.as_str())
        .bind(t.key_text.as_str())
        .bind(t.ticket_id.as_str())
        .bind(t.number.as_str())
        .bind(t.status.as_str())
        .bind(t.raw_status.as_str())
        .bind(t.priority.as_str())
        .bind(t.ip.as_str())
        .bind(t.serial.as_str())
        .bind(t.domain.as_deref())
        .bind(t.sha256.as_deref())
        .bind(t.last_action.as_str())
        .bind(t.created_at.unix_timestamp())
        .bind(t.updated_at.unix_timestamp())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Local ticket records, most recently updated first.
    pub async fn tickets(
        &self,
        system: Option<&str>,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        let mut conds = Vec::new();
        let mut n = 0;
        if system.is_some() {
            n += 1;
            conds.push(format!("system = ${n}"));
        }
        if kind.is_some() {
            n += 1;
            conds.push(format!("kind = ${n}"));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT {TICKET_COLUMNS} FROM tickets {filter} ORDER BY updated_at DESC, system, ticket_key LIMIT ${}",
            n + 1
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(s) = system {
            q = q.bind(s);
        }
        if let Some(k) = kind {
            q = q.bind(k);
        }
        let rows = q.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(ticket_from_row).collect()
    }

    /// One ticket record.
    pub async fn ticket(
        &self,
        system: &str,
        key: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE system = $1 AND ticket_key = $2"
        )))
        .bind(system)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(ticket_from_row).transpose()
    }

    /// Expiry ticket records of a certificate.
    pub async fn tickets_of_certificate(
        &self,
        sha256: &str,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TICKET_COLUMNS} FROM tickets WHERE sha256 = $1 AND kind = 'expiry' ORDER BY system, ticket_key"
        )))
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(ticket_from_row).collect()
    }

    /// One delivery.
    pub async fn delivery(&self, id: &str) -> Result<DeliveryRow, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        delivery_from_row(&r)
    }

    /// Claim one pending delivery by id (a test message sent at once).
    pub async fn claim_delivery(
        &self,
        id: &str,
        lease_id: &str,
        now: OffsetDateTime,
        lease_seconds: i64,
    ) -> Result<DeliveryRow, StoreError> {
        let t = now.unix_timestamp();
        let n = {
            let _w = self.writer().await;
            sqlx::query(
                "UPDATE notify_deliveries SET state = 'leased', lease_id = $2, lease_until = $3, attempts = attempts + 1 \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(lease_id)
            .bind(t + lease_seconds)
            .execute(&self.pool)
            .await?
            .rows_affected()
        };
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        self.delivery(id).await
    }

    /// The certificate an endpoint serves now.
    pub async fn endpoint_current_sha(
        &self,
        host: &str,
        ip: &str,
        port: u16,
    ) -> Result<Option<String>, StoreError> {
        let r =
            sqlx::query("SELECT sha256 FROM endpoints WHERE host = $1 AND ip = $2 AND port = $3")
                .bind(host)
                .bind(ip)
                .bind(i64::from(port))
                .fetch_optional(&self.pool)
                .await?;
        Ok(match r {
            Some(r) => get(&r, "sha256")?,
            None => None,
        })
    }

    /// A certificate's signature algorithm.
    pub async fn signature_algorithm(&self, sha256: &str) -> Result<Option<String>, StoreError> {
        let r = sqlx::query("SELECT signature_algorithm FROM certificates WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| get(&r, "signature_algorithm")).transpose()
    }
}
