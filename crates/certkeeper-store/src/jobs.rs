//! Agent jobs and deployment targets. A job is claimed by its own agent with a lease:
//! a claim is one conditional UPDATE (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite:
//! the single writer), so two server replicas never hand out one job twice, and a
//! lease that ends without a result gives the job back (the attempt counts).

use certkeeper_core::jobs::{JobKind, JobState};
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use crate::{Backend, Store, StoreError, get, opt_ts, ts};

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub agent_id: String,
    pub kind: JobKind,
    pub subject: String,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_after: OffsetDateTime,
    pub leased_at: Option<OffsetDateTime>,
    pub lease_until: Option<OffsetDateTime>,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

/// A job just claimed, with the lease its result must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub job: Job,
    pub lease_id: String,
}

/// How an attempt ended, as the server decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded,
    /// Failed; `retry_at` queues it again, `None` gives up.
    Failed {
        code: String,
        message: String,
        retry_at: Option<OffsetDateTime>,
    },
}

/// A deployment target being created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub id: String,
    pub certificate_sha256: String,
    pub agent_id: String,
    pub cert_path: Option<String>,
    pub chain_path: Option<String>,
    pub fullchain_path: Option<String>,
    pub key_path: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: u32,
    pub key_mode: u32,
    /// argv; empty for no reload.
    pub reload: Vec<String>,
    pub endpoint_host: String,
    pub endpoint_port: u16,
}

/// A deployment target with its current job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub spec: NewDeployment,
    pub job: Job,
    pub deployed_sha256: Option<String>,
    pub deployed_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

const JOB_COLUMNS: &str = "j.id, j.agent_id, j.kind, j.subject, j.state, j.attempts, j.max_attempts, j.run_after, j.leased_at, j.lease_until, j.last_error_code, j.last_error, j.created_at, j.updated_at, j.finished_at";
const DEPLOYMENT_COLUMNS: &str = "d.id AS d_id, d.certificate_sha256, d.agent_id AS d_agent_id, d.cert_path, d.chain_path, d.fullchain_path, d.key_path, d.owner, d.grp, d.mode, d.key_mode, d.reload, d.endpoint_host, d.endpoint_port, d.deployed_sha256, d.deployed_at, d.created_at AS d_created_at";

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn job_from_row(r: &AnyRow) -> Result<Job, StoreError> {
    let count =
        |c: &str| -> Result<u32, StoreError> { u32::try_from(get::<i64>(r, c)?).map_err(corrupt) };
    Ok(Job {
        id: get(r, "id")?,
        agent_id: get(r, "agent_id")?,
        kind: get::<String>(r, "kind")?.parse().map_err(corrupt)?,
        subject: get(r, "subject")?,
        state: get::<String>(r, "state")?.parse().map_err(corrupt)?,
        attempts: count("attempts")?,
        max_attempts: count("max_attempts")?,
        run_after: ts(get(r, "run_after")?)?,
        leased_at: opt_ts(get(r, "leased_at")?)?,
        lease_until: opt_ts(get(r, "lease_until")?)?,
        last_error_code: get(r, "last_error_code")?,
        last_error: get(r, "last_error")?,
        created_at: ts(get(r, "created_at")?)?,
        updated_at: ts(get(r, "updated_at")?)?,
        finished_at: opt_ts(get(r, "finished_at")?)?,
    })
}

fn deployment_from_row(r: &AnyRow) -> Result<Deployment, StoreError> {
    let reload: String = get(r, "reload")?;
    let mode =
        |c: &str| -> Result<u32, StoreError> { u32::try_from(get::<i64>(r, c)?).map_err(corrupt) };
    Ok(Deployment {
        spec: NewDeployment {
            id: get(r, "d_id")?,
            certificate_sha256: get(r, "certificate_sha256")?,
            agent_id: get(r, "d_agent_id")?,
            cert_path: get(r, "cert_path")?,
            chain_path: get(r, "chain_path")?,
            fullchain_path: get(r, "fullchain_path")?,
            key_path: get(r, "key_path")?,
            owner: get(r, "owner")?,
            group: get(r, "grp")?,
            mode: mode("mode")?,
            key_mode: mode("key_mode")?,
            reload: serde_json::from_str(&reload).map_err(corrupt)?,
            endpoint_host: get(r, "endpoint_host")?,
            endpoint_port: u16::try_from(get::<i64>(r, "endpoint_port")?).map_err(corrupt)?,
        },
        job: job_from_row(r)?,
        deployed_sha256: get(r, "deployed_sha256")?,
        deployed_at: opt_ts(get(r, "deployed_at")?)?,
        created_at: ts(get(r, "d_created_at")?)?,
    })
}

/// Insert a new queued job inside `tx`.
pub(crate) async fn insert_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    agent_id: &str,
    kind: JobKind,
    subject: &str,
    max_attempts: u32,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_jobs (id, agent_id, kind, subject, state, attempts, max_attempts, run_after, created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $6, $6)",
    )
    .bind(id)
    .bind(agent_id)
    .bind(kind.as_str())
    .bind(subject)
    .bind(i64::from(max_attempts))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Whether an enrolled, unrevoked agent has this id.
    pub async fn agent_active(&self, id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 FROM agents WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Create a deployment target and its first job, in one transaction.
    pub async fn create_deployment(
        &self,
        d: &NewDeployment,
        job_id: &str,
        max_attempts: u32,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let t = now.unix_timestamp();
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        insert_job(
            &mut tx,
            job_id,
            &d.agent_id,
            JobKind::Deploy,
            &d.id,
            max_attempts,
            t,
        )
        .await?;
        sqlx::query(
            "INSERT INTO deployments (id, certificate_sha256, agent_id, cert_path, chain_path, fullchain_path, key_path, owner, grp, mode, key_mode, reload, endpoint_host, endpoint_port, job_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&d.id)
        .bind(&d.certificate_sha256)
        .bind(&d.agent_id)
        .bind(d.cert_path.as_deref())
        .bind(d.chain_path.as_deref())
        .bind(d.fullchain_path.as_deref())
        .bind(d.key_path.as_deref())
        .bind(d.owner.as_deref())
        .bind(d.group.as_deref())
        .bind(i64::from(d.mode))
        .bind(i64::from(d.key_mode))
        .bind(serde_json::to_string(&d.reload).map_err(corrupt)?)
        .bind(&d.endpoint_host)
        .bind(i64::from(d.endpoint_port))
        .bind(job_id)
        .bind(t)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deployments, newest first; only those of one certificate when given.
    pub async fn deployments(
        &self,
        certificate_sha256: Option<&str>,
    ) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS}, {JOB_COLUMNS} FROM deployments d JOIN agent_jobs j ON j.id = d.job_id \
             WHERE ($1 = '' OR d.certificate_sha256 = $1) ORDER BY d.created_at DESC, d.id LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(certificate_sha256.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// One deployment, or `NotFound`.
    pub async fn deployment(&self, id: &str) -> Result<Deployment, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS}, {JOB_COLUMNS} FROM deployments d JOIN agent_jobs j ON j.id = d.job_id WHERE d.id = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        deployment_from_row(&row)
    }

    /// The deployment whose current job this is, if any.
    pub async fn deployment_of_job(&self, job_id: &str) -> Result<Option<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS}, {JOB_COLUMNS} FROM deployments d JOIN agent_jobs j ON j.id = d.job_id WHERE d.job_id = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// One job, or `NotFound`.
    pub async fn job(&self, id: &str) -> Result<Job, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM agent_jobs j WHERE j.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        job_from_row(&row)
    }

    /// Give back jobs whose lease ended without a result: due again at once (the
    /// lease was the wait), or failed when that was the last attempt. Returns how many.
    pub async fn expire_leases(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let t = now.unix_timestamp();
        let _w = self.writer().await;
        let n = sqlx::query(
            "UPDATE agent_jobs SET \
               state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, \
               finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END, \
               run_after = lease_until, lease_id = NULL, updated_at = $1, \
               last_error_code = 'lease_expired', \
               last_error = 'the agent took the job and did not report a result before its lease ended (crashed or offline)' \
             WHERE state = 'leased' AND lease_until < $1",
        )
        .bind(t)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Claim up to `limit` due jobs of `agent_id` for `lease_seconds`. Expired leases
    /// are given back first, so a job whose agent died is claimed again here.
    pub async fn claim_jobs(
        &self,
        agent_id: &str,
        lease_id: &str,
        now: OffsetDateTime,
        lease_seconds: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        self.expire_leases(now).await?;
        let t = now.unix_timestamp();
        let pick = match self.backend {
            Backend::Postgres => {
                "SELECT id FROM agent_jobs WHERE agent_id = $3 AND state = 'queued' AND run_after <= $1 \
                 ORDER BY run_after, id LIMIT $4 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id FROM agent_jobs WHERE agent_id = $3 AND state = 'queued' AND run_after <= $1 \
                 ORDER BY run_after, id LIMIT $4"
            }
        };
        let sql = format!(
            "UPDATE agent_jobs SET state = 'leased', lease_id = $2, leased_at = $1, lease_until = $5, \
             attempts = attempts + 1, updated_at = $1 \
             WHERE id IN ({pick}) AND state = 'queued' AND agent_id = $3"
        );
        {
            let _w = self.writer().await;
            let mut tx = self.pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(t)
                .bind(lease_id)
                .bind(agent_id)
                .bind(limit)
                .bind(t + lease_seconds)
                .execute(&mut *tx)
                .await?;
            // Asking for jobs is contact, as a report is.
            sqlx::query("UPDATE agents SET last_contact = $2 WHERE id = $1")
                .bind(agent_id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM agent_jobs j WHERE j.lease_id = $1 AND j.agent_id = $2 ORDER BY j.run_after, j.id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(lease_id)
            .bind(agent_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedJob {
                    job: job_from_row(r)?,
                    lease_id: lease_id.to_string(),
                })
            })
            .collect()
    }

    /// Record the outcome of a leased attempt. Only the agent holding the lease may:
    /// another agent's job is `NotFound`; a lease that ended (and perhaps went to a
    /// later claim) is `LeaseLost`.
    pub async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        lease_id: &str,
        outcome: &JobOutcome,
        now: OffsetDateTime,
    ) -> Result<Job, StoreError> {
        let t = now.unix_timestamp();
        let (state, code, message, run_after, finished) = match outcome {
            JobOutcome::Succeeded => ("succeeded", None, None, None, Some(t)),
            JobOutcome::Failed {
                code,
                message,
                retry_at,
            } => match retry_at {
                Some(at) => (
                    "queued",
                    Some(code.as_str()),
                    Some(message.as_str()),
                    Some(at.unix_timestamp()),
                    None,
                ),
                None => (
                    "failed",
                    Some(code.as_str()),
                    Some(message.as_str()),
                    None,
                    Some(t),
                ),
            },
        };
        let n = {
            let _w = self.writer().await;
            sqlx::query(
                "UPDATE agent_jobs SET state = $4, last_error_code = $5, last_error = $6, \
                 run_after = COALESCE($7, run_after), finished_at = $8, lease_id = NULL, lease_until = NULL, updated_at = $9 \
                 WHERE id = $1 AND agent_id = $2 AND lease_id = $3 AND state = 'leased'",
            )
            .bind(job_id)
            .bind(agent_id)
            .bind(lease_id)
            .bind(state)
            .bind(code)
            .bind(message)
            .bind(run_after)
            .bind(finished)
            .bind(t)
            .execute(&self.pool)
            .await?
            .rows_affected()
        };
        let job = self.job(job_id).await?;
        if job.agent_id != agent_id {
            return Err(StoreError::NotFound);
        }
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(job)
    }

    /// Note what a finished deployment put in place.
    pub async fn mark_deployed(
        &self,
        deployment_id: &str,
        sha256: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE deployments SET deployed_sha256 = $2, deployed_at = $3 WHERE id = $1")
            .bind(deployment_id)
            .bind(sha256)
            .bind(now.unix_timestamp())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Start a deployment again with a fresh job (all attempts available, due now),
    /// deploying `certificate_sha256` from now on. A current job that is still queued
    /// is closed as superseded; one an agent holds is left to finish (its result no
    /// longer decides the deployment).
    pub async fn restart_deployment(
        &self,
        deployment_id: &str,
        certificate_sha256: &str,
        job_id: &str,
        max_attempts: u32,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let t = now.unix_timestamp();
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT agent_id, job_id FROM deployments WHERE id = $1")
            .bind(deployment_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let agent_id: String = get(&row, "agent_id")?;
        let old_job: String = get(&row, "job_id")?;
        sqlx::query(
            "UPDATE agent_jobs SET state = 'failed', last_error_code = 'superseded', last_error = 'replaced by a newer deployment job', finished_at = $2, updated_at = $2 \
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(&old_job)
        .bind(t)
        .execute(&mut *tx)
        .await?;
        insert_job(
            &mut tx,
            job_id,
            &agent_id,
            JobKind::Deploy,
            deployment_id,
            max_attempts,
            t,
        )
        .await?;
        sqlx::query("UPDATE deployments SET job_id = $2, certificate_sha256 = $3 WHERE id = $1")
            .bind(deployment_id)
            .bind(job_id)
            .bind(certificate_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The ids of the deployments that deploy `certificate_sha256` now.
    pub async fn deployments_of(
        &self,
        certificate_sha256: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT id FROM deployments WHERE certificate_sha256 = $1 ORDER BY id")
                .bind(certificate_sha256)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    /// What the inventory knows of `host:port` now: per address, the leaf and when it
    /// was last seen served.
    pub async fn endpoint_sightings(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<certkeeper_core::deploy::EndpointSighting>, StoreError> {
        let rows =
            sqlx::query("SELECT sha256, last_seen FROM endpoints WHERE host = $1 AND port = $2")
                .bind(host)
                .bind(i64::from(port))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(certkeeper_core::deploy::EndpointSighting {
                    sha256: get::<Option<String>>(r, "sha256")?
                        .map(|s| s.parse().map_err(corrupt))
                        .transpose()?,
                    last_seen: opt_ts(get(r, "last_seen")?)?,
                })
            })
            .collect()
    }
}

/// What an `http01` job asks its agent to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http01Job {
    pub token: String,
    pub key_authorization: String,
    /// When the agent reported serving it.
    pub ready_at: Option<OffsetDateTime>,
}

impl Store {
    /// Queue an `http01` job for `agent_id` (one attempt: a lease that ends without
    /// the order ending fails it) with the token and key authorization to serve.
    pub async fn create_http01_job(
        &self,
        job_id: &str,
        agent_id: &str,
        subject: &str,
        token: &str,
        key_authorization: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let t = now.unix_timestamp();
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        insert_job(&mut tx, job_id, agent_id, JobKind::Http01, subject, 1, t).await?;
        sqlx::query(
            "INSERT INTO http01_jobs (job_id, token, key_authorization, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(job_id)
        .bind(token)
        .bind(key_authorization)
        .bind(t)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token of an `http01` job, while its order is in flight (`None` after).
    pub async fn http01_job(&self, job_id: &str) -> Result<Option<Http01Job>, StoreError> {
        let row = sqlx::query(
            "SELECT token, key_authorization, ready_at FROM http01_jobs WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Http01Job {
                token: get(&r, "token")?,
                key_authorization: get(&r, "key_authorization")?,
                ready_at: opt_ts(get(&r, "ready_at")?)?,
            })
        })
        .transpose()
    }

    /// The agent holding the lease of an `http01` job serves its token now.
    /// `LeaseLost` when it does not hold the lease (any more).
    pub async fn http01_ready(
        &self,
        job_id: &str,
        agent_id: &str,
        lease_id: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let n = {
            let _w = self.writer().await;
            sqlx::query(
                "UPDATE http01_jobs SET ready_at = $4 WHERE job_id = $1 AND EXISTS \
                 (SELECT 1 FROM agent_jobs WHERE id = $1 AND agent_id = $2 AND lease_id = $3 AND state = 'leased')",
            )
            .bind(job_id)
            .bind(agent_id)
            .bind(lease_id)
            .bind(now.unix_timestamp())
            .execute(&self.pool)
            .await?
            .rows_affected()
        };
        if n == 0 {
            return Err(StoreError::LeaseLost);
        }
        Ok(())
    }

    /// End a job from the server's side, whoever holds it (an order that ended, or
    /// an agent that did not answer in time); its `http01` token is forgotten. A job
    /// already final is left as it is.
    pub async fn end_job(
        &self,
        job_id: &str,
        outcome: &JobOutcome,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let t = now.unix_timestamp();
        let (state, code, message) = match outcome {
            JobOutcome::Succeeded => ("succeeded", None, None),
            JobOutcome::Failed { code, message, .. } => {
                ("failed", Some(code.as_str()), Some(message.as_str()))
            }
        };
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE agent_jobs SET state = $2, last_error_code = COALESCE($3, last_error_code), \
             last_error = COALESCE($4, last_error), finished_at = $5, lease_id = NULL, lease_until = NULL, updated_at = $5 \
             WHERE id = $1 AND state IN ('queued', 'leased')",
        )
        .bind(job_id)
        .bind(state)
        .bind(code)
        .bind(message)
        .bind(t)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM http01_jobs WHERE job_id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Note the agent that answers a request's http-01 challenges (`None`: the server).
    pub async fn set_acme_http01_agent(
        &self,
        request_id: &str,
        agent_id: Option<&str>,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("UPDATE cert_requests SET acme_http01_agent = $2 WHERE id = $1")
            .bind(request_id)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The agent that answered a request's http-01 challenges, if one did.
    pub async fn acme_http01_agent(&self, request_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT acme_http01_agent FROM cert_requests WHERE id = $1")
            .bind(request_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        get(&row, "acme_http01_agent")
    }
}
