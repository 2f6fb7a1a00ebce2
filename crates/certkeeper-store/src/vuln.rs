//! Vulnerability scans and findings. A scan lists the endpoints it covers; each
//! endpoint's result is stored in one transaction with the update of that endpoint's
//! findings: kinds found are open (new ones from now), open kinds not found again are
//! fixed. A scan that failed to reach an endpoint changes none of its findings.

use certkeeper_core::findings::{Finding, FindingChanges, FindingKind, Severity, finding_changes};
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use crate::{Store, StoreError, get, opt_ts, ts};

/// One endpoint a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEndpoint {
    pub host: String,
    pub ip: String,
    pub port: u16,
    /// The agent that saw it last (it scans it), if any.
    pub agent_id: Option<String>,
}

/// A scan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulnScan {
    pub id: String,
    pub requested_by: String,
    pub status: String,
    pub endpoints_total: u32,
    pub created_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

/// One endpoint's result within a scan.
#[derive(Debug, Clone)]
pub struct ScanResult {
    pub endpoint: ScanEndpoint,
    pub scanned_at: OffsetDateTime,
    pub error: Option<String>,
    pub facts: Option<serde_json::Value>,
    pub findings: Vec<Finding>,
    pub changes: FindingChanges,
}

/// One finding of one endpoint, with its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRow {
    pub endpoint: ScanEndpoint,
    pub finding: Finding,
    pub open: bool,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub fixed_at: Option<OffsetDateTime>,
    pub scan_id: String,
}

/// What `findings` lists.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// This severity or worse.
    pub min_severity: Option<Severity>,
    pub kind: Option<FindingKind>,
    /// `None`: open only; `Some(true)`: fixed only; with `all`, both.
    pub fixed: Option<bool>,
    pub all: bool,
    pub limit: u32,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

impl Store {
    /// Create a scan over `endpoints`.
    pub async fn create_scan(
        &self,
        id: &str,
        requested_by: &str,
        endpoints: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query(
            "INSERT INTO vuln_scans (id, requested_by, status, endpoints_total, created_at) \
             VALUES ($1, $2, 'running', $3, $4)",
        )
        .bind(id)
        .bind(requested_by)
        .bind(endpoints as i64)
        .bind(now.unix_timestamp())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every endpoint of the inventory, for a scan of everything.
    pub async fn all_endpoints(&self) -> Result<Vec<ScanEndpoint>, StoreError> {
        let rows =
            sqlx::query("SELECT host, ip, port, agent_id FROM endpoints ORDER BY host, ip, port")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(endpoint_of).collect()
    }

    /// The inventory's endpoints named `host` on `port` (every address seen).
    pub async fn endpoints_named(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<ScanEndpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT host, ip, port, agent_id FROM endpoints WHERE host = $1 AND port = $2 ORDER BY ip",
        )
        .bind(host)
        .bind(i64::from(port))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_of).collect()
    }

    /// Store one endpoint's result and move its findings, in one transaction.
    /// Returns what changed against the findings open before.
    pub async fn record_scan_result(
        &self,
        scan_id: &str,
        endpoint: &ScanEndpoint,
        now: OffsetDateTime,
        error: Option<&str>,
        facts: Option<&serde_json::Value>,
        findings: &[Finding],
    ) -> Result<FindingChanges, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let t = now.unix_timestamp();
        let port = i64::from(endpoint.port);
        let open: Vec<FindingKind> = sqlx::query(
            "SELECT kind FROM vuln_findings WHERE host = $1 AND ip = $2 AND port = $3 AND status = 'open'",
        )
        .bind(&endpoint.host)
        .bind(&endpoint.ip)
        .bind(port)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| get::<String>(r, "kind").and_then(|k| k.parse().map_err(corrupt)))
        .collect::<Result<_, _>>()?;
        let found: Vec<FindingKind> = findings.iter().map(|f| f.kind).collect();
        let changes = if error.is_some() {
            // Not reached: nothing is known to be fixed or new.
            FindingChanges::default()
        } else {
            finding_changes(&open, &found)
        };
        if error.is_none() {
            for f in findings {
                let reopened = !open.contains(&f.kind);
                sqlx::query(
                    "INSERT INTO vuln_findings (host, ip, port, kind, severity, title, evidence, fix, suites, \
                     status, first_seen, last_seen, fixed_at, scan_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $10, $10, NULL, $11) \
                     ON CONFLICT (host, ip, port, kind) DO UPDATE SET severity = $5, title = $6, evidence = $7, \
                     fix = $8, suites = $9, status = 'open', last_seen = $10, fixed_at = NULL, scan_id = $11, \
                     first_seen = CASE WHEN $12 = 1 THEN $10 ELSE vuln_findings.first_seen END",
                )
                .bind(&endpoint.host)
                .bind(&endpoint.ip)
                .bind(port)
                .bind(f.kind.as_str())
                .bind(f.severity.as_str())
                .bind(&f.title)
                .bind(&f.evidence)
                .bind(&f.fix)
                .bind(json(&f.suites))
                .bind(t)
                .bind(scan_id)
                .bind(i64::from(reopened))
                .execute(&mut *tx)
                .await?;
            }
            for k in &changes.fixed {
                sqlx::query(
                    "UPDATE vuln_findings SET status = 'fixed', fixed_at = $5, scan_id = $6 \
                     WHERE host = $1 AND ip = $2 AND port = $3 AND kind = $4",
                )
                .bind(&endpoint.host)
                .bind(&endpoint.ip)
                .bind(port)
                .bind(k.as_str())
                .bind(t)
                .bind(scan_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO vuln_results (scan_id, host, ip, port, scanned_at, error, facts, findings, changes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (scan_id, host, ip, port) DO NOTHING",
        )
        .bind(scan_id)
        .bind(&endpoint.host)
        .bind(&endpoint.ip)
        .bind(port)
        .bind(t)
        .bind(error)
        .bind(facts.map(json))
        .bind(json(&findings))
        .bind(json(&changes))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changes)
    }

    /// Mark the scan done once every endpoint it covers has a result (results come
    /// from the server and from agents, in any order). Returns whether it is done.
    pub async fn finish_scan(&self, id: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let done = sqlx::query(
            "UPDATE vuln_scans SET status = 'done', finished_at = $2 WHERE id = $1 AND status = 'running' \
             AND (SELECT COUNT(*) FROM vuln_results WHERE scan_id = $1) >= endpoints_total",
        )
        .bind(id)
        .bind(now.unix_timestamp())
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0;
        Ok(done)
    }

    /// Claim occurrence `due_at` of schedule `name` for scan `scan_id`: true for the
    /// one replica that gets it, false for every other.
    pub async fn claim_schedule_run(
        &self,
        name: &str,
        due_at: OffsetDateTime,
        scan_id: &str,
    ) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let n = sqlx::query(
            "INSERT INTO vuln_schedule_runs (name, due_at, scan_id) VALUES ($1, $2, $3) \
             ON CONFLICT (name, due_at) DO NOTHING",
        )
        .bind(name)
        .bind(due_at.unix_timestamp())
        .bind(scan_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The latest scans, newest first.
    pub async fn scans(&self, limit: u32) -> Result<Vec<VulnScan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, requested_by, status, endpoints_total, created_at, finished_at FROM vuln_scans \
             ORDER BY created_at DESC, id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(scan_of).collect()
    }

    /// Hand `endpoints` of scan `scan_id` to their agent as one job.
    pub async fn create_scan_job(
        &self,
        scan_id: &str,
        job_id: &str,
        agent_id: &str,
        endpoints: &[ScanEndpoint],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let t = now.unix_timestamp();
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        crate::jobs::insert_job(
            &mut tx,
            job_id,
            agent_id,
            certkeeper_core::jobs::JobKind::VulnScan,
            scan_id,
            3,
            t,
        )
        .await?;
        for e in endpoints {
            sqlx::query("INSERT INTO vuln_scan_targets (job_id, scan_id, host, ip, port) VALUES ($1, $2, $3, $4, $5)")
                .bind(job_id)
                .bind(scan_id)
                .bind(&e.host)
                .bind(&e.ip)
                .bind(i64::from(e.port))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The endpoints a scan job covers.
    pub async fn scan_job_targets(&self, job_id: &str) -> Result<Vec<ScanEndpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.host, t.ip, t.port, j.agent_id FROM vuln_scan_targets t JOIN agent_jobs j ON j.id = t.job_id \
             WHERE t.job_id = $1 ORDER BY t.host, t.ip, t.port",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_of).collect()
    }

    pub async fn scan(&self, id: &str) -> Result<(VulnScan, Vec<ScanResult>), StoreError> {
        let row = sqlx::query(
            "SELECT id, requested_by, status, endpoints_total, created_at, finished_at FROM vuln_scans WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let scan = scan_of(&row)?;
        let rows = sqlx::query(
            "SELECT host, ip, port, scanned_at, error, facts, findings, changes FROM vuln_results \
             WHERE scan_id = $1 ORDER BY host, ip, port",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let results = rows
            .iter()
            .map(|r| {
                let facts: Option<String> = get(r, "facts")?;
                Ok(ScanResult {
                    endpoint: endpoint_of(r)?,
                    scanned_at: ts(get(r, "scanned_at")?)?,
                    error: get(r, "error")?,
                    facts: facts
                        .map(|f| serde_json::from_str(&f))
                        .transpose()
                        .map_err(corrupt)?,
                    findings: serde_json::from_str(&get::<String>(r, "findings")?)
                        .map_err(corrupt)?,
                    changes: serde_json::from_str(&get::<String>(r, "changes")?)
                        .map_err(corrupt)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((scan, results))
    }

    /// Findings by endpoint, severity and kind; open ones unless asked otherwise;
    /// worst first.
    pub async fn findings(&self, f: &FindingFilter) -> Result<Vec<FindingRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT host, ip, port, kind, severity, title, evidence, fix, suites, status, first_seen, \
             last_seen, fixed_at, scan_id FROM vuln_findings \
             WHERE ($1 = '' OR host = $1) AND ($2 = 0 OR port = $2) AND ($3 = '' OR kind = $3) \
             AND ($4 = 1 OR status = $5) ORDER BY host, ip, port, kind",
        )
        .bind(f.host.clone().unwrap_or_default())
        .bind(i64::from(f.port.unwrap_or(0)))
        .bind(f.kind.map(|k| k.as_str()).unwrap_or_default())
        .bind(i64::from(f.all))
        .bind(if f.fixed == Some(true) { "fixed" } else { "open" })
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<FindingRow> = rows
            .iter()
            .map(|r| {
                Ok(FindingRow {
                    endpoint: endpoint_of(r)?,
                    finding: Finding {
                        kind: get::<String>(r, "kind")?.parse().map_err(corrupt)?,
                        severity: get::<String>(r, "severity")?.parse().map_err(corrupt)?,
                        title: get(r, "title")?,
                        evidence: get(r, "evidence")?,
                        fix: get(r, "fix")?,
                        suites: serde_json::from_str(&get::<String>(r, "suites")?)
                            .map_err(corrupt)?,
                    },
                    open: get::<String>(r, "status")? == "open",
                    first_seen: ts(get(r, "first_seen")?)?,
                    last_seen: ts(get(r, "last_seen")?)?,
                    fixed_at: opt_ts(get(r, "fixed_at")?)?,
                    scan_id: get(r, "scan_id")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        if let Some(min) = f.min_severity {
            out.retain(|r| r.finding.severity >= min);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.finding.severity));
        if f.limit > 0 {
            out.truncate(f.limit as usize);
        }
        Ok(out)
    }
}

fn scan_of(row: &AnyRow) -> Result<VulnScan, StoreError> {
    Ok(VulnScan {
        id: get(row, "id")?,
        requested_by: get(row, "requested_by")?,
        status: get(row, "status")?,
        endpoints_total: get::<i64>(row, "endpoints_total")? as u32,
        created_at: ts(get(row, "created_at")?)?,
        finished_at: opt_ts(get(row, "finished_at")?)?,
    })
}

fn endpoint_of(r: &AnyRow) -> Result<ScanEndpoint, StoreError> {
    Ok(ScanEndpoint {
        host: get(r, "host")?,
        ip: get(r, "ip")?,
        port: u16::try_from(get::<i64>(r, "port")?).map_err(corrupt)?,
        agent_id: r.try_get::<Option<String>, _>("agent_id").ok().flatten(),
    })
}
