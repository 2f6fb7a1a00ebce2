//! The ServiceNow connector: the Table API on `incident`, as
//! `shared/contracts/ticketing.md` §1 describes it.
//!
//! - Basic auth on every request (reqwest marks the header sensitive); every value
//!   sent and read is a string; `sysparm_fields` is always sent and reference links are
//!   excluded (objects `{value}` are still accepted).
//! - The dedupe token goes in `correlation_id`, with `correlation_display` set to
//!   the configured name; find results are post-filtered on both, since an unknown
//!   field in an encoded query is silently ignored.
//! - Priority is derived by the instance from impact and urgency: the configured
//!   pairs are sent, and the priority that comes back is compared with the one asked
//!   for. A mismatch (an edited lookup table) is logged as a warning and the ticket is
//!   returned all the same: it exists, and failing would only make the caller look for
//!   it again.
//! - A reopen is one PATCH from Resolved (6) to In Progress (2) with the work note; a
//!   403, or a 200 whose state did not change (the ACL of a Closed or Canceled record),
//!   is `NotAllowed`.
//! - A 403 on a read is `Auth` (a missing role); on a write it is `Rejected` with the
//!   instance's detail (a data policy names the fields), on a reopen `NotAllowed`.

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::Url;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::{NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef};

const SYSTEM: &str = "servicenow";

/// The fields a find asks for.
const FIND_FIELDS: &str =
    "sys_id,number,state,priority,correlation_id,correlation_display,sys_created_on";

/// Settings of the ServiceNow connector.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNowConfig {
    /// The instance, `https://<instance>.service-now.com`.
    pub url: String,
    pub username: String,
    pub password: String,
    /// Impact and urgency sent for High (priority 2 in the default lookup).
    #[serde(default = "default_high")]
    pub high: ImpactUrgency,
    /// Impact and urgency sent for Highest (priority 1 in the default lookup).
    #[serde(default = "default_highest")]
    pub highest: ImpactUrgency,
    /// `caller_id` of new incidents (a sys_id or, with the instance's settings, a name).
    #[serde(default)]
    pub caller_id: Option<String>,
    #[serde(default)]
    pub assignment_group: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    /// The `close_code` of a resolve ("Solution provided"; older instances use
    /// "Solved (Permanently)").
    #[serde(default = "default_close_code")]
    pub close_code: String,
    /// Where notes go: `work_notes` (internal, the default) or `comments`.
    #[serde(default)]
    pub note_field: NoteField,
    /// More fields a data policy of the instance requires on insert.
    #[serde(default)]
    pub extra_fields: BTreeMap<String, String>,
    /// The `correlation_display` that marks our incidents.
    #[serde(default = "default_correlation_display")]
    pub correlation_display: String,
}

/// An impact and urgency pair, each 1 (High), 2 (Medium) or 3 (Low).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpactUrgency {
    pub impact: u8,
    pub urgency: u8,
}

impl ImpactUrgency {
    /// The priority of the default lookup table (1 Critical … 5 Planning).
    pub fn default_priority(self) -> u8 {
        self.impact + self.urgency - 1
    }
}

/// The journal field notes are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteField {
    /// Internal work notes.
    #[default]
    WorkNotes,
    /// Customer-visible comments (usually e-mailed to the caller).
    Comments,
}

impl NoteField {
    fn name(self) -> &'static str {
        match self {
            NoteField::WorkNotes => "work_notes",
            NoteField::Comments => "comments",
        }
    }
}

fn default_high() -> ImpactUrgency {
    ImpactUrgency {
        impact: 1,
        urgency: 2,
    }
}
fn default_highest() -> ImpactUrgency {
    ImpactUrgency {
        impact: 1,
        urgency: 1,
    }
}
fn default_close_code() -> String {
    "Solution provided".into()
}
fn default_correlation_display() -> String {
    "certkeeper".into()
}

impl ServiceNowConfig {
    /// A configuration with the defaults of everything but the instance and the user.
    pub fn new(url: &str, username: &str, password: &str) -> Self {
        ServiceNowConfig {
            url: url.into(),
            username: username.into(),
            password: password.into(),
            high: default_high(),
            highest: default_highest(),
            caller_id: None,
            assignment_group: None,
            category: None,
            close_code: default_close_code(),
            note_field: NoteField::default(),
            extra_fields: BTreeMap::new(),
            correlation_display: default_correlation_display(),
        }
    }
}

impl std::fmt::Debug for ServiceNowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceNowConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"***")
            .field("high", &self.high)
            .field("highest", &self.highest)
            .field("caller_id", &self.caller_id)
            .field("assignment_group", &self.assignment_group)
            .field("category", &self.category)
            .field("close_code", &self.close_code)
            .field("note_field", &self.note_field)
            .field("extra_fields", &self.extra_fields)
            .field("correlation_display", &self.correlation_display)
            .finish()
    }
}

/// The ServiceNow connector.
#[derive(Debug, Clone)]
pub struct ServiceNow {
    cfg: Arc<ServiceNowConfig>,
    /// `<instance>/api/now/table/incident`.
    table: Url,
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// Fields certkeeper sets itself; `extra_fields` may not name them.
const MANAGED: [&str; 13] = [
    "short_description",
    "description",
    "impact",
    "urgency",
    "priority",
    "state",
    "correlation_id",
    "correlation_display",
    "caller_id",
    "assignment_group",
    "category",
    "work_notes",
    "comments",
];

impl ServiceNow {
    pub fn new(cfg: ServiceNowConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        let config = |message: String| TicketError::Config {
            system: SYSTEM,
            message,
        };
        let base = instance_url(SYSTEM, &cfg.url)?;
        if cfg.username.is_empty() {
            return Err(config("username is empty".into()));
        }
        for (what, p) in [("high", cfg.high), ("highest", cfg.highest)] {
            if !(1..=3).contains(&p.impact) || !(1..=3).contains(&p.urgency) {
                return Err(config(format!(
                    "{what}: impact and urgency are 1, 2 or 3 (got {}/{})",
                    p.impact, p.urgency
                )));
            }
        }
        if cfg.close_code.trim().is_empty() {
            return Err(config("close_code is empty".into()));
        }
        if cfg.correlation_display.is_empty() || cfg.correlation_display.len() > 100 {
            return Err(config(
                "correlation_display must hold 1 to 100 characters".into(),
            ));
        }
        if let Some(k) = cfg
            .extra_fields
            .keys()
            .find(|k| MANAGED.contains(&k.as_str()))
        {
            return Err(config(format!(
                "extra_fields may not set {k}, which certkeeper sets itself"
            )));
        }
        let table = base
            .join("api/now/table/incident")
            .map_err(|e| config(format!("url: {e}")))?;
        Ok(ServiceNow {
            client: http_client(SYSTEM, &retry)?,
            cfg: Arc::new(cfg),
            table,
            retry,
        })
    }

    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .basic_auth(&self.cfg.username, Some(&self.cfg.password))
            .header(reqwest::header::ACCEPT, "application/json")
    }

    fn record_url(&self, sys_id: &str) -> Result<Url, TicketError> {
        if sys_id.is_empty() || !sys_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(TicketError::Rejected {
                system: SYSTEM,
                status: 0,
                message: format!("{sys_id:?} is not a sys_id"),
            });
        }
        let mut u = self.table.clone();
        u.path_segments_mut()
            .map_err(|_| TicketError::Config {
                system: SYSTEM,
                message: "url cannot be a base".into(),
            })?
            .push(sys_id);
        Ok(u)
    }

    pub async fn find_by_key(&self, token: &str) -> Result<Vec<TicketRef>, TicketError> {
        check_token(SYSTEM, token)?;
        let query = format!(
            "correlation_id={token}^correlation_display={}^ORDERBYDESCsys_created_on",
            encode_query_value(&self.cfg.correlation_display)
        );
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::GET, self.table.clone())
                .query(&[
                    ("sysparm_query", query.as_str()),
                    ("sysparm_fields", FIND_FIELDS),
                    ("sysparm_limit", "20"),
                    ("sysparm_display_value", "false"),
                    ("sysparm_exclude_reference_link", "true"),
                ])
        })
        .await?;
        let body = answer(resp, Op::Read).await?;
        let rows = body
            .get("result")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("a find answer without a result list"))?;
        let mut found = Vec::new();
        for row in rows {
            // The post-filter: an unknown or ignored field would have returned other rows.
            if field(row, "correlation_id").as_deref() != Some(token) {
                continue;
            }
            if let Some(d) = field(row, "correlation_display")
                && d != self.cfg.correlation_display
            {
                continue;
            }
            found.push(ticket_ref(row)?);
        }
        Ok(found)
    }

    pub async fn create(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        check_token(SYSTEM, t.key)?;
        let pair = self.pair(t.priority);
        let mut body = Map::new();
        for (k, v) in &self.cfg.extra_fields {
            body.insert(k.clone(), Value::String(v.clone()));
        }
        body.insert("short_description".into(), t.subject.into());
        body.insert("description".into(), t.body.into());
        body.insert("impact".into(), pair.impact.to_string().into());
        body.insert("urgency".into(), pair.urgency.to_string().into());
        body.insert("correlation_id".into(), t.key.into());
        body.insert(
            "correlation_display".into(),
            self.cfg.correlation_display.as_str().into(),
        );
        for (k, v) in [
            ("caller_id", &self.cfg.caller_id),
            ("assignment_group", &self.cfg.assignment_group),
            ("category", &self.cfg.category),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), v.as_str().into());
            }
        }
        let req = self
            .request(reqwest::Method::POST, self.table.clone())
            .query(&[
                (
                    "sysparm_fields",
                    "sys_id,number,state,priority,sys_created_on",
                ),
                ("sysparm_exclude_reference_link", "true"),
            ])
            .json(&Value::Object(body));
        let resp = super::send_once(SYSTEM, &self.retry, req).await?;
        let body = answer(resp, Op::Write).await?;
        let row = body
            .get("result")
            .filter(|r| r.is_object())
            .ok_or_else(|| protocol("a create answer without a result record"))?;
        let mut created = row.clone();
        if field(row, "sys_created_on").is_none()
            && let Some(o) = created.as_object_mut()
        {
            o.insert(
                "sys_created_on".into(),
                format_sn_time(OffsetDateTime::now_utc()).into(),
            );
        }
        let r = ticket_ref(&created)?;
        self.check_priority(&r.display_no, pair, field(row, "priority"));
        Ok(r)
    }

    pub async fn add_note(&self, id: &str, text: &str) -> Result<(), TicketError> {
        let mut body = Map::new();
        body.insert(self.cfg.note_field.name().into(), text.into());
        self.patch(id, Value::Object(body), Op::Write).await?;
        Ok(())
    }

    pub async fn reopen(&self, id: &str, note: &str) -> Result<(), TicketError> {
        let note = format!("Reopened by certkeeper: {note}");
        let current = self.read(id).await?;
        let state = field(&current, "state").unwrap_or_default();
        if norm_status(&state) == NormStatus::Active {
            // Nothing to reopen (someone did already): the note still goes in.
            return self.add_note(id, &note).await;
        }
        let mut body = Map::new();
        body.insert("state".into(), "2".into());
        body.insert(self.cfg.note_field.name().into(), note.into());
        let row = self.patch(id, Value::Object(body), Op::Reopen).await?;
        match field(&row, "state") {
            Some(s) if s == "2" => Ok(()),
            Some(s) => Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!(
                    "the incident stayed in state {s} ({}); closed and canceled incidents cannot be reopened by this user",
                    state_label(&s)
                ),
            }),
            None => Err(protocol("a reopen answer without the state")),
        }
    }

    pub async fn set_priority(&self, id: &str, p: Priority) -> Result<(), TicketError> {
        let pair = self.pair(p);
        let row = self
            .patch(
                id,
                json!({"impact": pair.impact.to_string(), "urgency": pair.urgency.to_string()}),
                Op::Write,
            )
            .await?;
        let no = field(&row, "number").unwrap_or_else(|| id.to_string());
        self.check_priority(&no, pair, field(&row, "priority"));
        Ok(())
    }

    pub async fn resolve(&self, id: &str, note: &str) -> Result<(), TicketError> {
        let row = self
            .patch(
                id,
                json!({"state": "6", "close_code": self.cfg.close_code, "close_notes": note}),
                Op::Write,
            )
            .await?;
        match field(&row, "state") {
            Some(s) if s == "6" => Ok(()),
            Some(s) => Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!("the incident stayed in state {s} ({})", state_label(&s)),
            }),
            None => Err(protocol("a resolve answer without the state")),
        }
    }

    pub async fn test_connection(&self) -> Result<(), TicketError> {
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::GET, self.table.clone())
                .query(&[("sysparm_limit", "1"), ("sysparm_fields", "sys_id")])
        })
        .await?;
        let body = answer(resp, Op::Read).await?;
        if body.get("result").and_then(Value::as_array).is_none() {
            return Err(protocol("no result list: is this the instance's URL?"));
        }
        Ok(())
    }

    fn pair(&self, p: Priority) -> ImpactUrgency {
        match p {
            Priority::High => self.cfg.high,
            Priority::Highest => self.cfg.highest,
        }
    }

    fn check_priority(&self, number: &str, pair: ImpactUrgency, got: Option<String>) {
        let wanted = pair.default_priority().to_string();
        if got.as_deref() != Some(wanted.as_str()) {
            tracing::warn!(
                system = SYSTEM,
                incident = number,
                impact = pair.impact,
                urgency = pair.urgency,
                wanted = %wanted,
                got = got.as_deref().unwrap_or("(none)"),
                "the instance derived another priority from impact and urgency: check the high/highest pairs against its lookup table"
            );
        }
    }

    async fn read(&self, id: &str) -> Result<Value, TicketError> {
        let url = self.record_url(id)?;
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::GET, url.clone()).query(&[
                ("sysparm_fields", "sys_id,number,state"),
                ("sysparm_exclude_reference_link", "true"),
            ])
        })
        .await?;
        let body = answer(resp, Op::Read).await?;
        body.get("result")
            .filter(|r| r.is_object())
            .cloned()
            .ok_or_else(|| protocol("a record answer without a result"))
    }

    async fn patch(&self, id: &str, body: Value, op: Op) -> Result<Value, TicketError> {
        let url = self.record_url(id)?;
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::PATCH, url.clone())
                .query(&[
                    (
                        "sysparm_fields",
                        "sys_id,number,state,priority,reopen_count",
                    ),
                    ("sysparm_exclude_reference_link", "true"),
                ])
                .json(&body)
        })
        .await?;
        let body = answer(resp, op).await?;
        body.get("result")
            .filter(|r| r.is_object())
            .cloned()
            .ok_or_else(|| protocol("an update answer without a result"))
    }
}

/// What a call was, for mapping a 403.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Reopen,
}

/// A 2xx answer's JSON, or the error it stands for.
async fn answer(resp: reqwest::Response, op: Op) -> Result<Value, TicketError> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| TicketError::Unavailable {
        system: SYSTEM,
        message: super::describe_transport_error(&e),
        retry_after: None,
    })?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if (200..300).contains(&status) {
        return json.ok_or_else(|| protocol(format!("HTTP {status} with a body that is not JSON")));
    }
    let message = json
        .as_ref()
        .map(error_message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("HTTP {status}"));
    Err(match status {
        401 => TicketError::Auth {
            system: SYSTEM,
            message,
        },
        403 => match op {
            Op::Read => TicketError::Auth {
                system: SYSTEM,
                message: format!("{message} (does the user have the itil role?)"),
            },
            Op::Reopen => TicketError::NotAllowed {
                system: SYSTEM,
                message,
            },
            Op::Write => TicketError::Rejected {
                system: SYSTEM,
                status,
                message,
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

/// `message: detail` of the error envelope, cut to a readable length.
fn error_message(v: &Value) -> String {
    let e = v.get("error");
    let part = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let (m, d) = (part("message"), part("detail"));
    let s = match (m.is_empty(), d.is_empty()) {
        (false, false) => format!("{m}: {d}"),
        (false, true) => m,
        (true, false) => d,
        (true, true) => String::new(),
    };
    truncate(&s, 400)
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn protocol(message: impl Into<String>) -> TicketError {
    TicketError::Protocol {
        system: SYSTEM,
        message: message.into(),
    }
}

/// A field as a string: a plain string, a `{value}` (reference or display-value
/// object), or a number.
fn field(row: &Value, name: &str) -> Option<String> {
    match row.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => match o.get("value") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn ticket_ref(row: &Value) -> Result<TicketRef, TicketError> {
    let id = field(row, "sys_id").ok_or_else(|| protocol("a record without sys_id"))?;
    let state = field(row, "state").ok_or_else(|| protocol("a record without state"))?;
    let created =
        field(row, "sys_created_on").ok_or_else(|| protocol("a record without sys_created_on"))?;
    Ok(TicketRef {
        display_no: field(row, "number").unwrap_or_else(|| id.clone()),
        id,
        status: norm_status(&state),
        raw_status: state,
        created: parse_sn_time(&created)
            .ok_or_else(|| protocol(format!("sys_created_on {created:?} is not a date")))?,
    })
}

/// The contract's state table; an unknown code counts as active (a custom state
/// between New and Resolved).
pub fn norm_status(state: &str) -> NormStatus {
    match state {
        "6" => NormStatus::Resolved,
        "7" => NormStatus::Closed,
        "8" => NormStatus::Canceled,
        _ => NormStatus::Active,
    }
}

fn state_label(s: &str) -> &'static str {
    match s {
        "1" => "New",
        "2" => "In Progress",
        "3" => "On Hold",
        "6" => "Resolved",
        "7" => "Closed",
        "8" => "Canceled",
        _ => "unknown",
    }
}

const SN_TIME: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

fn parse_sn_time(s: &str) -> Option<OffsetDateTime> {
    time::PrimitiveDateTime::parse(s.trim(), SN_TIME)
        .ok()
        .map(|t| t.assume_utc())
}

fn format_sn_time(t: OffsetDateTime) -> String {
    t.format(SN_TIME).unwrap_or_default()
}

/// A literal `^` in an encoded-query value is written `^^`.
fn encode_query_value(v: &str) -> String {
    v.replace('^', "^^")
}

/// A dedupe token is `cm1-` and lower-case hex: nothing to escape in any query
/// language. Anything else is refused before it reaches one.
pub(super) fn check_token(system: &'static str, token: &str) -> Result<(), TicketError> {
    let ok = token
        .strip_prefix("cm1-")
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(TicketError::Rejected {
            system,
            status: 0,
            message: format!("{token:?} is not a dedupe token (cm1-<hex>)"),
        })
    }
}

/// The instance's base URL, with a trailing slash: http or https, no credentials,
/// no query.
pub(super) fn instance_url(system: &'static str, url: &str) -> Result<Url, TicketError> {
    let config = |message: String| TicketError::Config { system, message };
    let mut u = Url::parse(url.trim()).map_err(|e| config(format!("url {url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(config(format!(
            "url: only http and https, not {}",
            u.scheme()
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        // Not echoed: the URL holds a credential.
        return Err(config(
            "url: credentials do not belong in the URL; use the password or key setting".into(),
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(config("url: no host".into()));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(config("url: no query or fragment, please".into()));
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// The HTTP client of the ticketing connectors, built as `fetch` builds its own:
/// rustls with the platform's trust store, no redirects (a redirect would carry the
/// credentials elsewhere), no proxy from the environment, bounded connect and request
/// times. Plain http works (a lab instance, the simulators).
pub(super) fn http_client(
    system: &'static str,
    retry: &RetryPolicy,
) -> Result<reqwest::Client, TicketError> {
    let config = |message: String| TicketError::Config { system, message };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config().map_err(config)?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(retry.timeout)
        .connect_timeout(retry.timeout)
        .build()
        .map_err(|e| {
            config(format!(
                "HTTP client: {}",
                super::describe_transport_error(&e)
            ))
        })
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| e.to_string())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_normalise_per_the_contract() {
        for (s, n) in [
            ("1", NormStatus::Active),
            ("2", NormStatus::Active),
            ("3", NormStatus::Active),
            ("6", NormStatus::Resolved),
            ("7", NormStatus::Closed),
            ("8", NormStatus::Canceled),
        ] {
            assert_eq!(norm_status(s), n, "{s}");
        }
    }

    #[test]
    fn config_is_strict_and_debug_redacts() {
        let cfg: ServiceNowConfig = serde_json::from_value(json!({
            "url": "https://x.service-now.com", "username": "u", "password": "hunter2-secret",
            "high": {"impact": 2, "urgency": 1}
        }))
        .unwrap();
        assert_eq!(cfg.high.default_priority(), 2);
        assert_eq!(cfg.highest.default_priority(), 1);
        assert_eq!(cfg.close_code, "Solution provided");
        assert_eq!(cfg.note_field, NoteField::WorkNotes);
        let d = format!("{cfg:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(
            serde_json::from_value::<ServiceNowConfig>(json!({
                "url": "https://x", "username": "u", "password": "p", "pasword": "typo"
            }))
            .is_err()
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let r = RetryPolicy::default();
        let mut c = ServiceNowConfig::new("ftp://x", "u", "p");
        assert!(matches!(
            ServiceNow::new(c.clone(), r),
            Err(TicketError::Config { .. })
        ));
        c.url = "https://u:secretpw@x.service-now.com".into();
        let e = ServiceNow::new(c.clone(), r).unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
        c.url = "https://x.service-now.com".into();
        c.high = ImpactUrgency {
            impact: 0,
            urgency: 2,
        };
        assert!(ServiceNow::new(c.clone(), r).is_err());
        c.high = default_high();
        c.extra_fields.insert("priority".into(), "1".into());
        assert!(ServiceNow::new(c, r).is_err());
    }

    #[test]
    fn tokens_are_checked_and_times_parsed() {
        assert!(check_token(SYSTEM, "cm1-0123abcd").is_ok());
        assert!(check_token(SYSTEM, "cm1-01^ORstate=1").is_err());
        assert!(check_token(SYSTEM, "x").is_err());
        assert_eq!(
            parse_sn_time("2026-12-02 10:11:12"),
            Some(time::macros::datetime!(2026-12-02 10:11:12 UTC))
        );
        assert_eq!(encode_query_value("a^b"), "a^^b");
    }
}
