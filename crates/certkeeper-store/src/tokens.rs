//! Scoped API tokens: named, with permissions and perhaps a team. Only the SHA-256 of
//! a token is kept; revoking deletes the row, so the token stops working with the
//! next request on every replica.

use certkeeper_core::access::Permissions;
use sqlx::Row;
use time::OffsetDateTime;

use crate::managed::audit;
use crate::{Store, StoreError};

/// A scoped token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedToken {
    pub id: String,
    pub name: String,
    pub team: Option<String>,
    pub permissions: Permissions,
    pub created_at: OffsetDateTime,
}

/// A token being created.
#[derive(Debug, Clone)]
pub struct NewScopedToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub team: Option<&'a str>,
    pub permissions: &'a Permissions,
    /// SHA-256 of the secret.
    pub token_hash: &'a str,
}

/// A scoped token from the columns id, name, permissions, team, created_at starting at `first`.
pub(crate) fn scoped_from_row(
    r: &sqlx::any::AnyRow,
    first: usize,
) -> Result<ScopedToken, StoreError> {
    let permissions: Option<String> = r.try_get(first + 2)?;
    let id: Option<String> = r.try_get(first)?;
    let name: Option<String> = r.try_get(first + 1)?;
    let (Some(id), Some(name), Some(permissions)) = (id, name, permissions) else {
        return Err(StoreError::Corrupt(
            "a scoped token without id, name or permissions".into(),
        ));
    };
    Ok(ScopedToken {
        id,
        name,
        // An unknown permission name (a newer server wrote it) fails closed.
        permissions: Permissions::parse_list(&permissions)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        team: r.try_get(first + 3)?,
        created_at: crate::ts(r.try_get(first + 4)?)?,
    })
}

impl Store {
    /// Store a new scoped token and audit its creation by `actor`, in one transaction.
    pub async fn create_scoped_token(
        &self,
        t: &NewScopedToken<'_>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT 1 FROM api_tokens WHERE name = $1")
            .bind(t.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if taken {
            return Err(StoreError::Exists(format!("a token named {}", t.name)));
        }
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, kind, agent_id, created_at, id, name, permissions, team) VALUES ($1, 'scoped', NULL, $2, $3, $4, $5, $6)",
        )
        .bind(t.token_hash)
        .bind(now.unix_timestamp())
        .bind(t.id)
        .bind(t.name)
        .bind(t.permissions.to_list())
        .bind(t.team)
        .execute(&mut *tx)
        .await
        .map_err(|e| match e {
            // Two replicas creating the same name at once: the unique index decides.
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Exists(format!("a token named {}", t.name))
            }
            other => other.into(),
        })?;
        audit(
            &mut tx,
            actor,
            "create_token",
            &token_subject(t.id, t.name, t.team),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every scoped token, oldest first.
    pub async fn scoped_tokens(&self) -> Result<Vec<ScopedToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, permissions, team, created_at FROM api_tokens WHERE kind = 'scoped' ORDER BY created_at, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| scoped_from_row(r, 0)).collect()
    }

    /// Revoke (delete) a scoped token and audit it; `NotFound` when there is none.
    pub async fn revoke_scoped_token(
        &self,
        id: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<ScopedToken, StoreError> {
        let _w = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, name, permissions, team, created_at FROM api_tokens WHERE kind = 'scoped' AND id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let token = scoped_from_row(&row, 0)?;
        sqlx::query("DELETE FROM api_tokens WHERE kind = 'scoped' AND id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "revoke_token",
            &token_subject(&token.id, &token.name, token.team.as_deref()),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }
}

/// How a token is named in the audit log.
fn token_subject(id: &str, name: &str, team: Option<&str>) -> String {
    match team {
        Some(t) => format!("{id} {name} (team {t})"),
        None => format!("{id} {name}"),
    }
}
