//! The inventory in SQLite (embedded default) or PostgreSQL (several replicas), through
//! one sqlx `AnyPool`. Both backends are always compiled; each has its own embedded
//! migrations. Domain types carry no database derives: rows are mapped here.

mod ingest;
mod jobs;
mod managed;
mod notify;
mod queries;
mod tokens;
mod vuln;

use std::path::Path;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, Row, SqlStr};
use time::OffsetDateTime;

pub use ingest::{ParsedCert, ReportMeta, Sighting, SightingResult};
pub use jobs::{ClaimedJob, Deployment, Http01Job, Job, JobOutcome, NewDeployment};
pub use managed::{CertRequest, ImportOutcome, KeyHolder, StoredKey};
pub use notify::{
    AttemptRow, CandidatePage, CertMeta, DeliveryOutcome, DeliveryRow, NewDelivery, TicketRecord,
    TicketWork, WorkOutcome,
};
pub use tokens::{NewScopedToken, ScopedToken};
pub use vuln::{FindingFilter, FindingRow, ScanEndpoint, ScanResult, VulnScan};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Storage failures. Not-found is kept apart from everything else.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested row does not exist.
    #[error("not found")]
    NotFound,
    /// The database URL names no supported backend.
    #[error("unsupported database URL (expected sqlite://… or postgres://…): {0}")]
    UnsupportedUrl(String),
    /// A row with this key exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A pagination cursor that this store did not hand out.
    #[error("invalid cursor")]
    InvalidCursor,
    /// An enrollment token that is unknown, expired or used up.
    #[error("the enrollment token is unknown, expired or used up")]
    EnrollmentRefused,
    /// The data directory could not be created.
    #[error("cannot create the database directory: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value does not decode (a bug or a hand-edited database).
    #[error("stored data does not decode: {0}")]
    Corrupt(String),
    /// Migrating the schema failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A job's result came from an agent whose lease on it has ended.
    #[error("the lease on this job has ended")]
    LeaseLost,
    /// Any other database error (connection lost, disk full, constraint…).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Who an API token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap administrator token (first start or `CERTKEEPER_ADMIN_TOKEN`).
    Admin,
    /// An enrolled agent's credential.
    Agent { id: String },
    /// A named token with permissions, perhaps for a team.
    Token(ScopedToken),
}

/// The inventory.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer; serialising our writers avoids SQLITE_BUSY on lock upgrade.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

/// `(version, name)`; the SQL is `migrations/<backend>/<name>.sql`. A test checks that
/// every file of both folders is listed here.
macro_rules! migrations {
    ($dir:literal) => {
        &[
            (
                1,
                "0001_inventory",
                include_str!(concat!("../migrations/", $dir, "/0001_inventory.sql")),
            ),
            (
                2,
                "0002_keys",
                include_str!(concat!("../migrations/", $dir, "/0002_keys.sql")),
            ),
            (
                3,
                "0003_requests",
                include_str!(concat!("../migrations/", $dir, "/0003_requests.sql")),
            ),
            (
                4,
                "0004_cas",
                include_str!(concat!("../migrations/", $dir, "/0004_cas.sql")),
            ),
            (
                5,
                "0005_renewal",
                include_str!(concat!("../migrations/", $dir, "/0005_renewal.sql")),
            ),
            (
                6,
                "0006_deploy",
                include_str!(concat!("../migrations/", $dir, "/0006_deploy.sql")),
            ),
            (
                7,
                "0007_acme",
                include_str!(concat!("../migrations/", $dir, "/0007_acme.sql")),
            ),
            (
                8,
                "0008_import_renewal",
                include_str!(concat!("../migrations/", $dir, "/0008_import_renewal.sql")),
            ),
            (
                9,
                "0009_teams",
                include_str!(concat!("../migrations/", $dir, "/0009_teams.sql")),
            ),
            (
                10,
                "0010_vulnscans",
                include_str!(concat!("../migrations/", $dir, "/0010_vulnscans.sql")),
            ),
            (
                11,
                "0011_notify",
                include_str!(concat!("../migrations/", $dir, "/0011_notify.sql")),
            ),
            (
                12,
                "0012_acme_timing",
                include_str!(concat!("../migrations/", $dir, "/0012_acme_timing.sql")),
            ),
            (
                13,
                "0013_http01_agent",
                include_str!(concat!("../migrations/", $dir, "/0013_http01_agent.sql")),
            ),
        ]
    };
}
static SQLITE_MIGRATIONS: &[(i64, &str, &str)] = migrations!("sqlite");
static POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = migrations!("postgres");

/// SQLite URL for a database file inside `dir`.
pub fn sqlite_url_in(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("certkeeper.db").display())
}

impl Store {
    /// Connect and bring the schema up to date. Several processes may do this at once
    /// against one PostgreSQL database (the migrator takes an advisory lock).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        if backend == Backend::Sqlite
            && let Some(path) = url
                .strip_prefix("sqlite://")
                .map(|p| p.split('?').next().unwrap_or(p))
            && let Some(parent) = Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let options: AnyConnectOptions = url.parse()?;
        let mut pool_options = AnyPoolOptions::new();
        if backend == Backend::Sqlite {
            pool_options = pool_options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=15000; PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;",
                    )
                    .await?;
                    Ok(())
                })
            });
        } else {
            pool_options = pool_options.max_connections(16);
        }
        let pool = pool_options.connect_with(options).await?;
        let list = match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        let migrations = list
            .iter()
            .map(|(v, name, sql)| {
                Migration::new(
                    *v,
                    (*name).into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations).run(&pool).await?;
        Ok(Store {
            pool,
            backend,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Close every connection (tests, shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Take the writer lock on SQLite; a no-op guard on PostgreSQL.
    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Record the first administrator token unless one exists. Returns whether this
    /// call created it (so only the first server of a shared database prints one).
    pub async fn init_admin_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO singletons (name, value) VALUES ('admin_token', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            sqlx::query("INSERT INTO api_tokens (token_hash, kind, agent_id, created_at) VALUES ($1, 'admin', NULL, $2)")
                .bind(token_hash)
                .bind(now.unix_timestamp())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Make `token_hash` the administrator token (preset through the environment);
    /// other administrator tokens are removed. Idempotent.
    pub async fn add_admin_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        // The preset is the administrator token: any other (the one generated at first
        // start, an earlier preset) stops working. This is how a token is rotated.
        sqlx::query("DELETE FROM api_tokens WHERE kind = 'admin' AND token_hash <> $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, kind, agent_id, created_at) VALUES ($1, 'admin', NULL, $2) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(now.unix_timestamp())
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO singletons (name, value) VALUES ('admin_token', $1) ON CONFLICT (name) DO NOTHING")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who holds the token with this hash; revoked agents and revoked (deleted)
    /// tokens hold nothing. Read on every request, so a revocation takes effect at
    /// once on every replica of the database.
    pub async fn principal(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(
            "SELECT t.kind, t.agent_id, a.revoked_at, t.id, t.name, t.permissions, t.team, t.created_at FROM api_tokens t LEFT JOIN agents a ON a.id = t.agent_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get(0)?;
        Ok(match kind.as_str() {
            "admin" => Some(Principal::Admin),
            "agent" => {
                let revoked: Option<i64> = row.try_get(2)?;
                let id: Option<String> = row.try_get(1)?;
                match (revoked, id) {
                    (None, Some(id)) => Some(Principal::Agent { id }),
                    _ => None,
                }
            }
            "scoped" => Some(Principal::Token(tokens::scoped_from_row(&row, 3)?)),
            _ => None,
        })
    }

    /// Store a new enrollment token (by hash).
    pub async fn create_enrollment_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        uses: u32,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("INSERT INTO enrollment_tokens (token_hash, created_at, expires_at, uses_left) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(now.unix_timestamp())
            .bind(expires_at.unix_timestamp())
            .bind(i64::from(uses))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Use one enrollment and create the agent with its credential, atomically.
    pub async fn enroll_agent(
        &self,
        enrollment_hash: &str,
        agent: &NewAgent,
        credential_hash: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2",
        )
        .bind(enrollment_hash)
        .bind(now.unix_timestamp())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if used != 1 {
            return Err(StoreError::EnrollmentRefused);
        }
        sqlx::query("INSERT INTO agents (id, name, hostname, version, enrolled_at, last_contact, watched_endpoints, revoked_at) VALUES ($1, $2, $3, $4, $5, $5, 0, NULL)")
            .bind(&agent.id)
            .bind(&agent.name)
            .bind(&agent.hostname)
            .bind(&agent.version)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO api_tokens (token_hash, kind, agent_id, created_at) VALUES ($1, 'agent', $2, $3)")
            .bind(credential_hash)
            .bind(&agent.id)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A server-wide setting (shared by every replica of a database).
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM singletons WHERE name = $1")
            .bind(format!("setting:{name}"))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0).map_err(StoreError::from))
            .transpose()
    }

    /// Set a setting unless it is set; returns the value in force afterwards.
    pub async fn init_setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        {
            let _w = self.writer().await;
            sqlx::query("INSERT INTO singletons (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(format!("setting:{name}"))
                .bind(value)
                .execute(&self.pool)
                .await?;
        }
        Ok(self
            .setting(name)
            .await?
            .unwrap_or_else(|| value.to_string()))
    }

    /// Set a server-wide setting.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let _w = self.writer().await;
        sqlx::query("INSERT INTO singletons (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(format!("setting:{name}"))
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revoke an agent: its credential stops working with the next request.
    pub async fn revoke_agent(&self, id: &str, now: OffsetDateTime) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let n =
            sqlx::query("UPDATE agents SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now.unix_timestamp())
                .execute(&self.pool)
                .await?
                .rows_affected();
        if n == 0 {
            // Unknown, or already revoked: tell them apart.
            let exists = sqlx::query("SELECT 1 FROM agents WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
        }
        Ok(())
    }
}

/// An agent being enrolled.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub version: String,
}

pub(crate) fn ts(secs: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn opt_ts(secs: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    secs.map(ts).transpose()
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(StoreError::from)
}

/// A database URL with any password replaced, for messages: the user-info password
/// and a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..scheme_end + 3], &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    match query {
        None => base,
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", q.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_file_is_listed() {
        for (dir, list) in [
            ("sqlite", super::SQLITE_MIGRATIONS),
            ("postgres", super::POSTGRES_MIGRATIONS),
        ] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/").to_string() + dir;
            let mut files: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            let listed: Vec<String> = list.iter().map(|(_, n, _)| format!("{n}.sql")).collect();
            assert_eq!(files, listed, "{dir}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://ck:s3cret@db:5432/ck"),
            "postgres://ck:***@db:5432/ck"
        );
        assert_eq!(super::redact_url("sqlite:///x.db"), "sqlite:///x.db");
        assert_eq!(
            super::redact_url("postgres://db/ck?user=ck&password=s3cret&sslmode=require"),
            "postgres://db/ck?user=ck&password=***&sslmode=require"
        );
    }
}
