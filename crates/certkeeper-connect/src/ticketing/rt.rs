//! The Request Tracker 5 connector (REST2), per `shared/contracts/ticketing.md` §0 and
//! §4, checked against Debian's RT 5.0.3.
//!
//! - Auth: `Authorization: token <authstring>` (RT 5's built-in auth tokens).
//! - The dedupe token lives in a ticket custom field (default `ExternalKey`). Search is
//!   TicketSQL `'CF.{ExternalKey}' = 'cm1-…'` with `fields=…,CustomFields`, and every
//!   hit is post-filtered on the field's value.
//! - Statuses: new, open, stalled → Active; resolved → Resolved; rejected, deleted →
//!   Canceled. Any other name (a custom lifecycle) counts as Active.
//! - Status and priority changes answer HTTP 200 even when RT refused them (`… isn't a
//!   valid status for this ticket.`), so every change is checked by reading the ticket
//!   again.
//! - Notes are comments (internal) by default. `note_kind = "correspond"` makes them
//!   replies, which e-mail the requestors **and reopen a resolved ticket** (a default
//!   scrip).
//! - Priority: RT stores a number. The configured values (`priority_high`,
//!   `priority_highest`) are labels or numbers; labels are turned into numbers here,
//!   with RT's default `%PriorityAsString` (Low 0, Medium 50, High 100) plus
//!   `priority_labels`. Numbers are sent because RT 5.0.3 stores a label given to
//!   `POST /ticket` verbatim (it only maps labels on update), and maps an unknown label
//!   on update silently to 0. The default map has no Highest: by default Highest is
//!   "High" (100, the top of the default scale); a site with a larger scale sets
//!   `priority_highest` to its label (with `priority_labels`) or number.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{
    NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef, send_once, send_retrying,
};

const SYSTEM: &str = "rt";

/// Settings of the RT connector.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtConfig {
    /// RT's `WebBaseURL` followed by its `WebPath` (`https://rt.example.com` or
    /// `https://example.com/rt`); `/REST/2.0/` is appended.
    pub url: String,
    /// An RT auth token (`1-14-abcdef…`), sent as `Authorization: token …`.
    pub token: String,
    /// The queue new tickets go to.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The ticket custom field holding the dedupe token (single-line, freeform).
    #[serde(default = "default_custom_field")]
    pub custom_field: String,
    /// How notes are added: `comment` (internal, the default) or `correspond` (e-mails
    /// the requestors and reopens a resolved ticket).
    #[serde(default)]
    pub note_kind: NoteKind,
    /// The priority of a new ticket: a label or a number (default "High").
    #[serde(default = "default_high")]
    pub priority_high: String,
    /// The priority of an escalated ticket: a label or a number (default "High", the
    /// top of RT's default scale).
    #[serde(default = "default_high")]
    pub priority_highest: String,
    /// Labels beyond RT's default Low = 0, Medium = 50, High = 100 (the site's
    /// `%PriorityAsString`), say `{ Critical = 150 }`.
    #[serde(default)]
    pub priority_labels: BTreeMap<String, i64>,
}

/// How notes are added to an RT ticket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// `POST /ticket/{id}/comment`: internal, leaves the status alone.
    #[default]
    Comment,
    /// `POST /ticket/{id}/correspond`: e-mails the requestors, reopens a resolved
    /// ticket.
    Correspond,
}

fn default_queue() -> String {
    "General".into()
}
fn default_custom_field() -> String {
    "ExternalKey".into()
}
fn default_high() -> String {
    "High".into()
}

impl fmt::Debug for RtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtConfig")
            .field("url", &self.url)
            .field("token", &"***")
            .field("queue", &self.queue)
            .field("custom_field", &self.custom_field)
            .field("note_kind", &self.note_kind)
            .field("priority_high", &self.priority_high)
            .field("priority_highest", &self.priority_highest)
            .field("priority_labels", &self.priority_labels)
            .finish()
    }
}

/// The RT connector (cheap to clone: clones share the client).
#[derive(Clone)]
pub struct Rt {
    inner: Arc<RtInner>,
}

struct RtInner {
    base: String,
    auth: HeaderValue,
    queue: String,
    custom_field: String,
    note_kind: NoteKind,
    high: i64,
    highest: i64,
    client: reqwest::Client,
    retry: RetryPolicy,
}

impl fmt::Debug for Rt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rt")
            .field("base", &self.inner.base)
            .field("auth", &"***")
            .field("queue", &self.inner.queue)
            .field("custom_field", &self.inner.custom_field)
            .field("note_kind", &self.inner.note_kind)
            .field("high", &self.inner.high)
            .field("highest", &self.inner.highest)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// A reqwest client as the fetcher builds one: rustls with the platform verifier,
/// no redirects, no proxy, connect timeout from the policy (the whole-request timeout
/// is set per request by `send_once`). Plain http works too.
pub(super) fn http_client(
    system: &'static str,
    policy: &RetryPolicy,
) -> Result<reqwest::Client, TicketError> {
    use std::sync::Arc;
    let config = |message: String| TicketError::Config { system, message };
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| config(format!("TLS trust store: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(policy.timeout)
        .build()
        .map_err(|e| config(format!("HTTP client: {e}")))
}

/// Check a base URL: http or https, a host, no credentials, no query; returned without
/// a trailing slash.
pub(super) fn base_url(system: &'static str, url: &str) -> Result<String, TicketError> {
    let config = |message: String| TicketError::Config { system, message };
    let parsed =
        reqwest::Url::parse(url.trim()).map_err(|e| config(format!("url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(config(format!(
            "url {url:?}: only http and https are supported"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(config(format!("url {url:?}: no host")));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Not echoed: the URL carries a credential.
        return Err(config(
            "url: credentials in the URL are not accepted; use the token setting".into(),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(config(format!("url {url:?}: no query or fragment allowed")));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// A token as `find_by_key` accepts it: `cm1-` and hex (nothing to escape).
pub(super) fn check_token(system: &'static str, token: &str) -> Result<(), TicketError> {
    let ok = token.len() <= 64
        && token.starts_with("cm1-")
        && token[4..].chars().all(|c| c.is_ascii_hexdigit())
        && token.len() > 4;
    if ok {
        Ok(())
    } else {
        Err(TicketError::Config {
            system,
            message: format!("{token:?} is not a dedupe token (cm1- and hex digits)"),
        })
    }
}

/// A server message, shortened (bodies can be pages of HTML).
pub(super) fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Rt {
    pub fn new(cfg: RtConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        let config = |message: String| TicketError::Config {
            system: SYSTEM,
            message,
        };
        let base = format!("{}/REST/2.0", base_url(SYSTEM, &cfg.url)?);
        let token = cfg.token.trim();
        if token.is_empty() {
            return Err(config("token is empty".into()));
        }
        let mut auth = HeaderValue::from_str(&format!("token {token}"))
            .map_err(|_| config("token holds characters a header cannot carry".into()))?;
        auth.set_sensitive(true);
        if cfg.queue.trim().is_empty() {
            return Err(config("queue is empty".into()));
        }
        // The name goes into TicketSQL inside '…{…}'.
        if cfg.custom_field.is_empty()
            || cfg
                .custom_field
                .chars()
                .any(|c| matches!(c, '\'' | '"' | '{' | '}' | '\\') || c.is_control())
        {
            return Err(config(format!(
                "custom_field {:?}: empty, or holds a quote, brace or backslash",
                cfg.custom_field
            )));
        }
        let high = priority_value(&cfg.priority_high, &cfg.priority_labels)?;
        let highest = priority_value(&cfg.priority_highest, &cfg.priority_labels)?;
        Ok(Rt {
            inner: Arc::new(RtInner {
                base,
                auth,
                queue: cfg.queue,
                custom_field: cfg.custom_field,
                note_kind: cfg.note_kind,
                high,
                highest,
                client: http_client(SYSTEM, &retry)?,
                retry,
            }),
        })
    }

    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.inner
            .client
            .request(method, format!("{}{path}", self.inner.base))
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// Send with retries and return the JSON of a 2xx answer; other answers become
    /// errors.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, TicketError> {
        let resp = send_retrying(SYSTEM, &self.inner.retry, || {
            let mut r = self.req(method.clone(), path).query(query);
            if let Some(b) = body {
                r = r.json(b);
            }
            r
        })
        .await?;
        answer(resp).await
    }

    pub async fn find_by_key(&self, token: &str) -> Result<Vec<TicketRef>, TicketError> {
        check_token(SYSTEM, token)?;
        let query = format!("'CF.{{{}}}' = '{token}'", self.inner.custom_field);
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let page_s = page.to_string();
            let v = self
                .call(
                    reqwest::Method::GET,
                    "/tickets",
                    &[
                        ("query", &query),
                        ("fields", "Status,Subject,Created,CustomFields"),
                        ("per_page", "100"),
                        ("page", &page_s),
                        ("orderby", "Created"),
                        ("order", "DESC"),
                    ],
                    None,
                )
                .await?;
            let items = v
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| protocol("a search answer without items"))?;
            for item in items {
                if self.cf_values(item).iter().any(|x| x == token) {
                    out.push(ticket_ref(item)?);
                }
            }
            let pages = v.get("pages").and_then(Value::as_u64).unwrap_or(1);
            if u64::from(page) >= pages || items.is_empty() || page >= 50 {
                break;
            }
            page += 1;
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.created));
        Ok(out)
    }

    /// The values of our custom field in a ticket (or search item).
    fn cf_values(&self, ticket: &Value) -> Vec<String> {
        ticket
            .get("CustomFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|cf| cf.get("name").and_then(Value::as_str) == Some(&self.inner.custom_field))
            .flat_map(|cf| {
                cf.get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }

    pub async fn create(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        check_token(SYSTEM, t.key)?;
        let body = json!({
            "Queue": self.inner.queue,
            "Subject": t.subject,
            "Priority": self.priority(t.priority).to_string(),
            "Content": t.body,
            "ContentType": "text/plain",
            "CustomFields": { self.inner.custom_field.as_str(): t.key },
        });
        // One attempt: a create is never retried blindly (Connector::create_deduped).
        let resp = send_once(
            SYSTEM,
            &self.inner.retry,
            self.req(reqwest::Method::POST, "/ticket").json(&body),
        )
        .await?;
        let v = answer(resp).await?;
        let id = id_of(&v).ok_or_else(|| protocol("a create answer without id"))?;
        // The ticket as RT holds it (status, created, and the key really stored: a
        // custom field not applied to the queue is dropped without an error).
        let ticket = self.ticket(&id).await?;
        if !self.cf_values(&ticket).iter().any(|x| x == t.key) {
            return Err(TicketError::Config {
                system: SYSTEM,
                message: format!(
                    "ticket {id} was created without the custom field {:?}: create it for tickets and apply it to queue {:?}",
                    self.inner.custom_field, self.inner.queue
                ),
            });
        }
        ticket_ref(&ticket)
    }

    async fn ticket(&self, id: &str) -> Result<Value, TicketError> {
        check_id(id)?;
        self.call(reqwest::Method::GET, &format!("/ticket/{id}"), &[], None)
            .await
    }

    pub async fn add_note(&self, id: &str, text: &str) -> Result<(), TicketError> {
        check_id(id)?;
        let kind = match self.inner.note_kind {
            NoteKind::Comment => "comment",
            NoteKind::Correspond => "correspond",
        };
        let body = json!({ "Content": text, "ContentType": "text/plain" });
        self.call(
            reqwest::Method::POST,
            &format!("/ticket/{id}/{kind}"),
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Set `Status` to `open` and read it back; a status RT refuses is `NotAllowed`.
    pub async fn reopen(&self, id: &str, note: &str) -> Result<(), TicketError> {
        self.set_status(id, "open").await?;
        self.add_note(id, note).await
    }

    pub async fn set_priority(&self, id: &str, p: Priority) -> Result<(), TicketError> {
        check_id(id)?;
        let want = self.priority(p);
        let body = json!({ "Priority": want.to_string() });
        let msgs = self
            .call(
                reqwest::Method::PUT,
                &format!("/ticket/{id}"),
                &[],
                Some(&body),
            )
            .await?;
        let now = self.ticket(id).await?;
        let got = now.get("Priority").and_then(value_str);
        if got.as_deref().and_then(|s| s.parse::<i64>().ok()) != Some(want) {
            return Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!(
                    "ticket {id}: priority is {} after asking for {want} ({})",
                    got.unwrap_or_default(),
                    messages(&msgs)
                ),
            });
        }
        Ok(())
    }

    /// Add the note, then set `Status` to `resolved` (checked by reading it back).
    pub async fn resolve(&self, id: &str, note: &str) -> Result<(), TicketError> {
        // A comment leaves the status alone; a correspond on a resolved ticket would
        // reopen it, so the note goes first.
        self.add_note(id, note).await?;
        self.set_status(id, "resolved").await
    }

    async fn set_status(&self, id: &str, status: &str) -> Result<(), TicketError> {
        check_id(id)?;
        let body = json!({ "Status": status });
        let msgs = self
            .call(
                reqwest::Method::PUT,
                &format!("/ticket/{id}"),
                &[],
                Some(&body),
            )
            .await?;
        // RT answers 200 to a refused change; only the ticket tells.
        let now = self.ticket(id).await?;
        let got = now.get("Status").and_then(Value::as_str).unwrap_or("");
        if got != status {
            return Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!(
                    "ticket {id} is still {got:?} after asking for {status:?}: {}",
                    messages(&msgs)
                ),
            });
        }
        Ok(())
    }

    /// Authenticated reads that create nothing: `GET /REST/2.0/rt`, the queue, and a
    /// search for the custom field (TicketSQL on a field that does not exist silently
    /// finds nothing, so every key would look new).
    pub async fn test_connection(&self) -> Result<(), TicketError> {
        let v = self.call(reqwest::Method::GET, "/rt", &[], None).await?;
        if v.get("Version").is_none() {
            return Err(protocol("GET /REST/2.0/rt did not name a version"));
        }
        let cf_search = json!([
            { "field": "Name", "value": self.inner.custom_field },
            { "field": "LookupType", "value": "RT::Queue-RT::Ticket" },
        ]);
        let found = self
            .call(
                reqwest::Method::POST,
                "/customfields",
                &[],
                Some(&cf_search),
            )
            .await?;
        if found.get("total").and_then(Value::as_u64).unwrap_or(0) == 0 {
            return Err(TicketError::Config {
                system: SYSTEM,
                message: format!(
                    "there is no ticket custom field {:?} (or it is not visible to this user)",
                    self.inner.custom_field
                ),
            });
        }
        let queue = self
            .call(
                reqwest::Method::GET,
                &format!("/queue/{}", urlencode_path(&self.inner.queue)),
                &[],
                None,
            )
            .await;
        match queue {
            Ok(_) => Ok(()),
            Err(TicketError::Rejected { status: 404, .. }) => Err(TicketError::Config {
                system: SYSTEM,
                message: format!(
                    "queue {:?} does not exist or is not visible",
                    self.inner.queue
                ),
            }),
            Err(e) => Err(e),
        }
    }

    fn priority(&self, p: Priority) -> i64 {
        match p {
            Priority::High => self.inner.high,
            Priority::Highest => self.inner.highest,
        }
    }
}

/// A configured priority: a number, or a label of RT's default map or the site's.
fn priority_value(v: &str, extra: &BTreeMap<String, i64>) -> Result<i64, TicketError> {
    let v = v.trim();
    if let Ok(n) = v.parse::<i64>() {
        return Ok(n);
    }
    if let Some((_, n)) = extra.iter().find(|(k, _)| k.eq_ignore_ascii_case(v)) {
        return Ok(*n);
    }
    match v.to_ascii_lowercase().as_str() {
        "low" => Ok(0),
        "medium" => Ok(50),
        "high" => Ok(100),
        _ => Err(TicketError::Config {
            system: SYSTEM,
            message: format!(
                "priority {v:?} is neither a number nor a known label (Low, Medium, High, or one in priority_labels)"
            ),
        }),
    }
}

fn check_id(id: &str) -> Result<(), TicketError> {
    if !id.is_empty() && id.len() <= 20 && id.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(TicketError::Config {
            system: SYSTEM,
            message: format!("{id:?} is not an RT ticket id"),
        })
    }
}

fn urlencode_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn protocol(message: &str) -> TicketError {
    TicketError::Protocol {
        system: SYSTEM,
        message: message.into(),
    }
}

/// A 2xx answer's JSON (or `null` for an empty body); anything else an error with RT's
/// message.
async fn answer(resp: reqwest::Response) -> Result<Value, TicketError> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| TicketError::Unavailable {
        system: SYSTEM,
        message: super::describe_transport_error(&e),
        retry_after: None,
    })?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if (200..300).contains(&status) {
        return match json {
            Some(v) => Ok(v),
            None if text.trim().is_empty() => Ok(Value::Null),
            None => Err(protocol(&format!(
                "HTTP {status} with a body that is not JSON"
            ))),
        };
    }
    let message = json
        .as_ref()
        .map(messages)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| short(&text));
    Err(match status {
        401 => TicketError::Auth {
            system: SYSTEM,
            message: if message.is_empty() {
                "HTTP 401".into()
            } else {
                message
            },
        },
        500..=599 => TicketError::Unavailable {
            system: SYSTEM,
            message: format!("HTTP {status}: {message}"),
            retry_after: None,
        },
        _ => TicketError::Rejected {
            system: SYSTEM,
            status,
            message,
        },
    })
}

/// RT's words: `{"message": …}` or `["…", …]`.
fn messages(v: &Value) -> String {
    match v {
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map(short)
            .unwrap_or_default(),
        Value::Array(a) => short(
            &a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Value::String(s) => short(s),
        _ => String::new(),
    }
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn id_of(v: &Value) -> Option<String> {
    let id = value_str(v.get("id")?)?;
    check_id(&id).ok()?;
    Some(id)
}

/// A ticket (or search item with Status and Created) as a [`TicketRef`].
fn ticket_ref(v: &Value) -> Result<TicketRef, TicketError> {
    let id = id_of(v).ok_or_else(|| protocol("a ticket without a numeric id"))?;
    let raw_status = v
        .get("Status")
        .and_then(Value::as_str)
        .ok_or_else(|| protocol("a ticket without Status"))?
        .to_string();
    let created = v
        .get("Created")
        .and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
        .ok_or_else(|| protocol("a ticket without a readable Created"))?;
    Ok(TicketRef {
        display_no: format!("RT #{id}"),
        status: norm_status(&raw_status),
        id,
        raw_status,
        created,
    })
}

/// RT's default lifecycle, normalised; an unknown (custom) status counts as active.
pub fn norm_status(s: &str) -> NormStatus {
    match s.to_ascii_lowercase().as_str() {
        "resolved" => NormStatus::Resolved,
        "rejected" | "deleted" => NormStatus::Canceled,
        _ => NormStatus::Active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RtConfig {
        RtConfig {
            url: "http://127.0.0.1:18080/".into(),
            token: "1-14-secretsecret".into(),
            queue: default_queue(),
            custom_field: default_custom_field(),
            note_kind: NoteKind::Comment,
            priority_high: default_high(),
            priority_highest: default_high(),
            priority_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn statuses_follow_the_default_lifecycle() {
        for (s, n) in [
            ("new", NormStatus::Active),
            ("open", NormStatus::Active),
            ("stalled", NormStatus::Active),
            ("resolved", NormStatus::Resolved),
            ("rejected", NormStatus::Canceled),
            ("deleted", NormStatus::Canceled),
        ] {
            assert_eq!(norm_status(s), n, "{s}");
        }
    }

    #[test]
    fn priorities_are_numbers_or_known_labels() {
        let mut extra = BTreeMap::new();
        extra.insert("Critical".to_string(), 150);
        assert_eq!(priority_value("High", &extra).unwrap(), 100);
        assert_eq!(priority_value("medium", &extra).unwrap(), 50);
        assert_eq!(priority_value("120", &extra).unwrap(), 120);
        assert_eq!(priority_value("critical", &extra).unwrap(), 150);
        assert!(matches!(
            priority_value("Highest", &extra),
            Err(TicketError::Config { .. })
        ));
    }

    #[test]
    fn config_is_strict_and_debug_hides_the_token() {
        let rt = Rt::new(cfg(), RetryPolicy::default()).unwrap();
        assert_eq!(rt.inner.base, "http://127.0.0.1:18080/REST/2.0");
        for shown in [format!("{rt:?}"), format!("{:?}", cfg())] {
            assert!(!shown.contains("secretsecret"), "{shown}");
        }
        let err =
            serde_json::from_value::<RtConfig>(json!({"url":"http://x","token":"t","bogus":1}))
                .err()
                .unwrap();
        assert!(err.to_string().contains("bogus"), "{err}");
        let bad = RtConfig {
            custom_field: "Ext'Key".into(),
            ..cfg()
        };
        assert!(matches!(
            Rt::new(bad, RetryPolicy::default()),
            Err(TicketError::Config { .. })
        ));
        let creds = RtConfig {
            url: "http://root:hunter2@127.0.0.1/".into(),
            ..cfg()
        };
        let err = Rt::new(creds, RetryPolicy::default()).err().unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
