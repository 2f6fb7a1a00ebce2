//! Reading the inventory.

use std::collections::HashMap;

use certkeeper_core::inventory::{
    Agent, CertificateFilter, Endpoint, Page, ServedPeriod, StoredCertificate,
};
use certkeeper_core::{CertificateFacts, Fingerprint, KeyInfo, Serial};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, get, opt_ts, ts};

const CERT_COLUMNS: &str = "sha256, der, sha1, serial, subject, common_name, sans, issuer, not_before, not_after, key_type, key_bits, key_curve, signature_algorithm, is_ca, self_signed, subject_key_id, authority_key_id, ocsp_urls, ca_issuer_urls, crl_urls, first_seen";
const ENDPOINT_COLUMNS: &str = "id, host, ip, port, first_seen, last_seen, last_checked, sha256, agent_id, sni, protocol, cipher, starttls, last_error_kind, last_error";

fn json_list(row: &AnyRow, col: &str) -> Result<Vec<String>, StoreError> {
    let s: String = get(row, col)?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn fingerprint(s: &str) -> Result<Fingerprint, StoreError> {
    s.parse()
        .map_err(|e: certkeeper_core::cert::BadFingerprint| StoreError::Corrupt(e.to_string()))
}

fn cert_from_row(row: &AnyRow) -> Result<StoredCertificate, StoreError> {
    let sha: String = get(row, "sha256")?;
    let key_type: String = get(row, "key_type")?;
    let facts = CertificateFacts {
        sha256: fingerprint(&sha)?,
        sha1: get(row, "sha1")?,
        serial: Serial::from_hex_unchecked(get(row, "serial")?),
        subject: get(row, "subject")?,
        common_name: get(row, "common_name")?,
        sans: json_list(row, "sans")?,
        issuer: get(row, "issuer")?,
        not_before: ts(get(row, "not_before")?)?,
        not_after: ts(get(row, "not_after")?)?,
        key: KeyInfo {
            key_type: key_type
                .parse()
                .unwrap_or(certkeeper_core::KeyType::Unknown),
            bits: get::<Option<i64>>(row, "key_bits")?.map(|b| b as u32),
            curve: get(row, "key_curve")?,
        },
        signature_algorithm: get(row, "signature_algorithm")?,
        is_ca: get::<i64>(row, "is_ca")? != 0,
        self_signed: get::<i64>(row, "self_signed")? != 0,
        subject_key_id: get(row, "subject_key_id")?,
        authority_key_id: get(row, "authority_key_id")?,
        ocsp_urls: json_list(row, "ocsp_urls")?,
        ca_issuer_urls: json_list(row, "ca_issuer_urls")?,
        crl_urls: json_list(row, "crl_urls")?,
    };
    Ok(StoredCertificate {
        facts,
        der: get(row, "der")?,
        first_seen: ts(get(row, "first_seen")?)?,
    })
}

fn endpoint_from_row(row: &AnyRow) -> Result<Endpoint, StoreError> {
    let ip: String = get(row, "ip")?;
    let sha: Option<String> = get(row, "sha256")?;
    let kind: Option<String> = get(row, "last_error_kind")?;
    let msg: Option<String> = get(row, "last_error")?;
    Ok(Endpoint {
        host: get(row, "host")?,
        ip: ip
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("endpoint ip {ip:?}")))?,
        port: u16::try_from(get::<i64>(row, "port")?)
            .map_err(|_| StoreError::Corrupt("endpoint port".into()))?,
        first_seen: ts(get(row, "first_seen")?)?,
        last_seen: opt_ts(get(row, "last_seen")?)?,
        last_checked: ts(get(row, "last_checked")?)?,
        sha256: sha.as_deref().map(fingerprint).transpose()?,
        agent: get(row, "agent_id")?,
        sni: get(row, "sni")?,
        protocol: get(row, "protocol")?,
        cipher: get(row, "cipher")?,
        starttls: get(row, "starttls")?,
        last_error: kind.zip(msg),
    })
}

fn period(r: &AnyRow) -> Result<ServedPeriod, StoreError> {
    Ok(ServedPeriod {
        sha256: fingerprint(&get::<String>(r, "sha256")?)?,
        first_seen: ts(get(r, "first_seen")?)?,
        last_seen: ts(get(r, "last_seen")?)?,
        replaced_at: opt_ts(get(r, "replaced_at")?)?,
    })
}

/// Escape `%`, `_` and `\` for a LIKE pattern used with `ESCAPE '\'`.
fn like_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Cursor of the certificate listing: the (not_after, sha256) of the last item.
fn parse_cert_cursor(c: &str) -> Option<(i64, String)> {
    let (t, sha) = c.split_once('.')?;
    let t = t.parse().ok()?;
    fingerprint(sha).ok()?;
    Some((t, sha.to_string()))
}

/// A query built from fixed SQL fragments and bound values, with `$n` placeholders
/// (which both SQLite and PostgreSQL accept; sqlx's `QueryBuilder` writes `?` for `Any`).
struct Sql {
    text: String,
    args: Vec<Arg>,
}

enum Arg {
    Int(i64),
    Text(String),
}

impl Sql {
    fn new(text: impl Into<String>) -> Self {
        Sql {
            text: text.into(),
            args: Vec::new(),
        }
    }
    fn push(&mut self, fragment: &str) -> &mut Self {
        self.text.push_str(fragment);
        self
    }
    fn push_bind(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.args.push(arg.into());
        self.text.push_str(&format!("${}", self.args.len()));
        self
    }
    async fn fetch_all(self, pool: &sqlx::AnyPool) -> Result<Vec<AnyRow>, StoreError> {
        // Only fixed fragments and `$n` placeholders are ever pushed into `text`.
        let mut q = sqlx::query(AssertSqlSafe(self.text));
        for a in self.args {
            q = match a {
                Arg::Int(i) => q.bind(i),
                Arg::Text(t) => q.bind(t),
            };
        }
        Ok(q.fetch_all(pool).await?)
    }
}

impl From<i64> for Arg {
    fn from(i: i64) -> Self {
        Arg::Int(i)
    }
}

impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Text(s)
    }
}

impl Store {
    /// Certificates ordered by expiry (soonest first), then SHA-256.
    pub async fn list_certificates(
        &self,
        filter: &CertificateFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<StoredCertificate>, StoreError> {
        let cursor = match cursor {
            Some(c) => Some(parse_cert_cursor(c).ok_or(StoreError::InvalidCursor)?),
            None => None,
        };
        let mut qb = Sql::new(format!("SELECT {CERT_COLUMNS} FROM certificates WHERE 1=1"));
        if let Some(t) = filter.not_after_before {
            qb.push(" AND not_after <= ").push_bind(t.unix_timestamp());
        }
        if let (Some(expired), Some(now)) = (filter.expired, filter.now) {
            if expired {
                qb.push(" AND not_after < ").push_bind(now.unix_timestamp());
            } else {
                qb.push(" AND not_after >= ")
                    .push_bind(now.unix_timestamp());
            }
        }
        if let Some(q) = &filter.query {
            let p = like_pattern(q);
            qb.push(" AND (LOWER(COALESCE(common_name, '')) LIKE ")
                .push_bind(p.clone())
                .push(" ESCAPE '\\' OR LOWER(sans) LIKE ")
                .push_bind(p)
                .push(" ESCAPE '\\')");
        }
        if let Some(i) = &filter.issuer {
            qb.push(" AND LOWER(issuer) LIKE ")
                .push_bind(like_pattern(i))
                .push(" ESCAPE '\\'");
        }
        if let Some(s) = &filter.serial {
            qb.push(" AND serial = ").push_bind(s.to_lowercase());
        }
        if let Some((t, sha)) = cursor {
            qb.push(" AND (not_after > ")
                .push_bind(t)
                .push(" OR (not_after = ")
                .push_bind(t)
                .push(" AND sha256 > ")
                .push_bind(sha)
                .push("))");
        }
        qb.push(" ORDER BY not_after, sha256 LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = qb.fetch_all(&self.pool).await?;
        let mut items = rows
            .iter()
            .map(cert_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items
                .last()
                .map(|c| format!("{}.{}", c.facts.not_after.unix_timestamp(), c.facts.sha256))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// One certificate by SHA-256.
    pub async fn certificate(&self, sha256: &Fingerprint) -> Result<StoredCertificate, StoreError> {
        let sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE sha256 = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(sha256.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        cert_from_row(&row)
    }

    /// Endpoints serving each of `certs` now, keyed by SHA-256.
    pub async fn endpoints_serving(
        &self,
        certs: &[Fingerprint],
    ) -> Result<HashMap<Fingerprint, Vec<Endpoint>>, StoreError> {
        let mut out: HashMap<Fingerprint, Vec<Endpoint>> = HashMap::new();
        if certs.is_empty() {
            return Ok(out);
        }
        let mut qb = Sql::new(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE sha256 IN ("
        ));
        for (i, c) in certs.iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            qb.push_bind(c.to_string());
        }
        qb.push(") ORDER BY host, ip, port");
        for row in qb.fetch_all(&self.pool).await? {
            let e = endpoint_from_row(&row)?;
            if let Some(sha) = e.sha256 {
                out.entry(sha).or_default().push(e);
            }
        }
        Ok(out)
    }

    /// Where a certificate was served, including places that have since replaced it.
    pub async fn served_history_of(
        &self,
        sha256: &Fingerprint,
    ) -> Result<Vec<(String, u16, ServedPeriod)>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.host, e.port, h.sha256, h.first_seen, h.last_seen, h.replaced_at FROM served_history h JOIN endpoints e ON e.id = h.endpoint_id WHERE h.sha256 = $1 ORDER BY h.first_seen",
        )
        .bind(sha256.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "host")?,
                    u16::try_from(get::<i64>(r, "port")?).unwrap_or(0),
                    period(r)?,
                ))
            })
            .collect()
    }

    /// The certificates an endpoint has served, oldest first.
    pub async fn endpoint_history(
        &self,
        host: &str,
        ip: &str,
        port: u16,
    ) -> Result<Vec<ServedPeriod>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.sha256, h.first_seen, h.last_seen, h.replaced_at FROM served_history h JOIN endpoints e ON e.id = h.endpoint_id WHERE e.host = $1 AND e.ip = $2 AND e.port = $3 ORDER BY h.first_seen, h.id",
        )
        .bind(host)
        .bind(ip)
        .bind(i64::from(port))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(period).collect()
    }

    /// The presented chain of an endpoint, leaf first, as SHA-256s.
    pub async fn endpoint_chain(
        &self,
        host: &str,
        ip: &str,
        port: u16,
    ) -> Result<Vec<Fingerprint>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.sha256 FROM endpoint_chain c JOIN endpoints e ON e.id = c.endpoint_id WHERE e.host = $1 AND e.ip = $2 AND e.port = $3 ORDER BY c.position",
        )
        .bind(host)
        .bind(ip)
        .bind(i64::from(port))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| fingerprint(&get::<String>(r, "sha256")?))
            .collect()
    }

    /// Endpoints by id order; `host` (exact) and `port` narrow the list.
    pub async fn list_endpoints(
        &self,
        host: Option<&str>,
        port: Option<u16>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Endpoint>, StoreError> {
        let after: i64 = match cursor {
            Some(c) => c.parse().map_err(|_| StoreError::InvalidCursor)?,
            None => 0,
        };
        let mut qb = Sql::new(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id > "
        ));
        qb.push_bind(after);
        if let Some(h) = host {
            qb.push(" AND host = ").push_bind(h.to_string());
        }
        if let Some(p) = port {
            qb.push(" AND port = ").push_bind(i64::from(p));
        }
        qb.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let rows = qb.fetch_all(&self.pool).await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(get::<i64>(r, "id")?);
            items.push(endpoint_from_row(r)?);
        }
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            ids.get(limit as usize - 1).map(|i| i.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Every agent, with how many endpoints it saw last.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, a.name, a.hostname, a.version, a.enrolled_at, a.last_contact, a.watched_endpoints, a.revoked_at, \
             (SELECT COUNT(*) FROM endpoints e WHERE e.agent_id = a.id) AS endpoints_seen FROM agents a ORDER BY a.enrolled_at, a.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Agent {
                    id: get(r, "id")?,
                    name: get(r, "name")?,
                    hostname: get(r, "hostname")?,
                    version: get(r, "version")?,
                    enrolled_at: ts(get(r, "enrolled_at")?)?,
                    last_contact: opt_ts(get(r, "last_contact")?)?,
                    watched_endpoints: get::<i64>(r, "watched_endpoints")?.max(0) as u64,
                    endpoints_seen: get::<i64>(r, "endpoints_seen")?.max(0) as u64,
                    revoked_at: opt_ts(get(r, "revoked_at")?)?,
                })
            })
            .collect()
    }

    /// Row counts, for tests and the console: (certificates, endpoints, history rows).
    pub async fn counts(&self) -> Result<(i64, i64, i64), StoreError> {
        let c = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.pool).await?;
            get::<i64>(&row, "n")
        };
        Ok((
            c("SELECT COUNT(*) AS n FROM certificates").await?,
            c("SELECT COUNT(*) AS n FROM endpoints").await?,
            c("SELECT COUNT(*) AS n FROM served_history").await?,
        ))
    }
}
