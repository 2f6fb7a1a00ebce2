//! Databases for tests: SQLite in a temp dir always, and a fresh PostgreSQL database
//! per call when `CERTKEEPER_TEST_POSTGRES_URL` names a server.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, ensure};

/// A database URL for one test, and what keeps it alive.
pub struct TestDb {
    pub label: &'static str,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL server URL for tests, if configured.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var("CERTKEEPER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// A new empty SQLite database file in a temp dir.
pub fn sqlite() -> Result<TestDb> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    Ok(TestDb {
        label: "sqlite",
        url,
        _dir: Some(dir),
    })
}

/// A new empty PostgreSQL database, if a server is configured.
pub fn postgres() -> Result<Option<TestDb>> {
    let Some(admin) = postgres_admin_url() else {
        return Ok(None);
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "ck_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000
    );
    let out = Command::new("psql")
        .arg(&admin)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .context("running psql (install postgresql-client)")?;
    ensure!(
        out.status.success(),
        "CREATE DATABASE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Ok(Some(TestDb {
        label: "postgres",
        url: format!("{base}/{name}"),
        _dir: None,
    }))
}

/// SQLite, plus PostgreSQL when configured: run a storage test once per backend.
pub fn all() -> Result<Vec<TestDb>> {
    let mut v = vec![sqlite()?];
    v.extend(postgres()?);
    Ok(v)
}
