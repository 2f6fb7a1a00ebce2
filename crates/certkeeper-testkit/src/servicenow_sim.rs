//! An in-process ServiceNow Table API simulator (`incident` and `sys_journal_field`),
//! following the simulator checklist of `shared/contracts/ticketing.md` §1:
//!
//! 1. Basic auth against configured users, a 401 envelope on failure; a user without
//!    the `itil` flag gets 403.
//! 2. An incident table of string values; `sys_id` is 32 lower-case hex, `number`
//!    `INC` and 7 digits.
//! 3. Encoded queries: `=`, `!=`, `IN`, `LIKE`, `STARTSWITH` (and `ENDSWITH`,
//!    `ISEMPTY`, `ISNOTEMPTY`), `^`, `^OR`, `ORDERBY`/`ORDERBYDESC`, `^^`. Unknown
//!    fields are ignored, or match nothing with [`SnOptions::invalid_query_returns_no_rows`].
//! 4. `sysparm_fields`, `sysparm_limit`, `sysparm_offset`, `X-Total-Count`, `Link`,
//!    `sysparm_display_value` (labels for state, priority, impact, urgency) and
//!    reference fields as `{link, value}` unless `sysparm_exclude_reference_link`.
//! 5. Priority recomputed from impact and urgency on every write; a sent priority is
//!    ignored.
//! 6. Strict data policies: state 3 without `hold_reason`, state 6 without
//!    `close_code`/`close_notes` give 403; mandatory fields on insert are configurable.
//! 7. Journal appends stored as lists, queryable through `sys_journal_field`.
//! 8. 6 → 1/2/3 increments `reopen_count`; a write to a 7 or 8 record gives 403 or is
//!    silently ignored ([`ClosedWrites`]).
//! 9. Faults: 429 with `Retry-After` after N calls, 500/503, and a POST that commits
//!    and then stalls past the client's timeout ([`SnFault`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

/// A user of the instance.
#[derive(Debug, Clone)]
pub struct SnUser {
    pub name: String,
    pub password: String,
    /// Holds the `itil` role (may read and write incidents).
    pub itil: bool,
    /// An admin may write Closed and Canceled records.
    pub admin: bool,
}

impl SnUser {
    pub fn itil(name: &str, password: &str) -> Self {
        SnUser {
            name: name.into(),
            password: password.into(),
            itil: true,
            admin: false,
        }
    }
}

/// What a non-admin write to a Closed (7) or Canceled (8) incident does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedWrites {
    /// 403 with an ACL error.
    Forbidden,
    /// 200 with the record unchanged.
    SilentlyIgnored,
}

/// Settings of a simulated instance.
#[derive(Debug, Clone)]
pub struct SnOptions {
    pub users: Vec<SnUser>,
    /// The data policies of checklist item 6 (on by default).
    pub strict: bool,
    /// Fields an insert must carry (a data policy naming them).
    pub mandatory_on_insert: Vec<String>,
    pub closed_writes: ClosedWrites,
    /// `glide.invalid_query.returns_no_rows`: an unknown field makes a query match nothing.
    pub invalid_query_returns_no_rows: bool,
    /// Fields the query parser treats as unknown although records hold them (an
    /// instance where the field is not queryable): lets a test see the client's
    /// post-filter at work.
    pub unqueryable: Vec<String>,
}

impl Default for SnOptions {
    fn default() -> Self {
        SnOptions {
            users: vec![SnUser::itil("certkeeper", "integration-pw")],
            strict: true,
            mandatory_on_insert: Vec::new(),
            closed_writes: ClosedWrites::Forbidden,
            invalid_query_returns_no_rows: false,
            unqueryable: Vec::new(),
        }
    }
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnFault {
    /// 429 with `Retry-After: <secs>` and the rate-limit headers.
    RateLimited { retry_after_secs: u64 },
    /// An error status with the failure envelope (500, 503, 502 …).
    Status(u16),
    /// A POST that stores the record and then answers only after this long (past the
    /// client's timeout). Applies to inserts only.
    CommitThenStall(Duration),
}

#[derive(Debug, Clone)]
struct PendingFault {
    /// Fires on calls numbered from this one (1-based, all calls counted).
    from_call: u64,
    remaining: u32,
    fault: SnFault,
}

/// One journal entry (`work_notes` or `comments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub sys_id: String,
    pub element_id: String,
    pub element: String,
    pub value: String,
    pub created_on: String,
    pub created_by: String,
}

/// A call the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnCall {
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct Inner {
    opts: SnOptions,
    incidents: Vec<BTreeMap<String, String>>,
    journal: Vec<JournalEntry>,
    faults: Vec<PendingFault>,
    calls: Vec<SnCall>,
    next_number: u64,
    rng: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    base: String,
}

/// A running simulator; it stops when the handle is dropped.
pub struct ServiceNowSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceNowSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a simulator on 127.0.0.1 (a free port).
pub async fn start(opts: SnOptions) -> std::io::Result<ServiceNowSim> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seed = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 ^ u64::from(addr.port());
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            opts,
            incidents: Vec::new(),
            journal: Vec::new(),
            faults: Vec::new(),
            calls: Vec::new(),
            next_number: 10001,
            rng: seed | 1,
        }),
        base: format!("http://{addr}"),
    });
    let s = shared.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move { handle(s, method, uri, headers, body).await }
        },
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    Ok(ServiceNowSim { shared, addr, task })
}

impl ServiceNowSim {
    /// `http://127.0.0.1:<port>`, the instance URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared)
    }

    /// A snapshot of the incident table.
    pub fn incidents(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().incidents.clone()
    }

    /// One incident by sys_id.
    pub fn incident(&self, sys_id: &str) -> Option<BTreeMap<String, String>> {
        self.lock()
            .incidents
            .iter()
            .find(|r| r["sys_id"] == sys_id)
            .cloned()
    }

    /// The journal entries of an incident, oldest first.
    pub fn journal(&self, sys_id: &str) -> Vec<JournalEntry> {
        self.lock()
            .journal
            .iter()
            .filter(|j| j.element_id == sys_id)
            .cloned()
            .collect()
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<SnCall> {
        self.lock().calls.clone()
    }

    /// How many calls with this method were received.
    pub fn call_count(&self, method: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Inject `fault` for `times` calls, starting `after` calls from now (0: the next).
    pub fn inject(&self, after: u64, fault: SnFault, times: u32) {
        let mut g = self.lock();
        let from_call = g.calls.len() as u64 + after + 1;
        g.faults.push(PendingFault {
            from_call,
            remaining: times,
            fault,
        });
    }

    /// Change the settings while running.
    pub fn configure(&self, f: impl FnOnce(&mut SnOptions)) {
        f(&mut self.lock().opts);
    }

    /// Set fields of a record directly, as an administrator would (no policies, no
    /// ACL): for putting incidents into Closed or Canceled.
    pub fn force(&self, sys_id: &str, fields: &[(&str, &str)]) {
        let mut g = self.lock();
        if let Some(r) = g.incidents.iter_mut().find(|r| r["sys_id"] == sys_id) {
            for (k, v) in fields {
                r.insert((*k).into(), (*v).into());
            }
            derive(r);
        }
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock is a simulator bug; the data is still usable.
    s.inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// Incident columns, besides custom `u_` ones (anything else in a query is an
/// unknown field).
const INCIDENT_FIELDS: &[&str] = &[
    "sys_id",
    "number",
    "short_description",
    "description",
    "state",
    "incident_state",
    "impact",
    "urgency",
    "priority",
    "correlation_id",
    "correlation_display",
    "caller_id",
    "assignment_group",
    "category",
    "subcategory",
    "hold_reason",
    "close_code",
    "close_notes",
    "active",
    "reopen_count",
    "reopened_by",
    "reopened_time",
    "resolved_at",
    "closed_at",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "work_notes",
    "comments",
    "cmdb_ci",
    "contact_type",
];
/// A column of the table: one of the list, or a custom `u_` column.
fn is_field(known: &[&str], f: &str) -> bool {
    known.contains(&f) || (f.starts_with("u_") && f.len() > 2)
}

const JOURNAL_FIELDS: &[&str] = &[
    "sys_id",
    "element_id",
    "element",
    "value",
    "name",
    "sys_created_on",
    "sys_created_by",
];
const REFERENCE_FIELDS: &[&str] = &["caller_id", "assignment_group", "cmdb_ci", "reopened_by"];
const JOURNAL_ELEMENTS: &[&str] = &["work_notes", "comments"];

fn now_sn() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::now_utc().format(f).unwrap_or_default()
}

fn envelope(status: StatusCode, message: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message, "detail": detail}, "status": "failure"}).to_string(),
    )
        .into_response()
}

fn ok_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    s: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (resp, stall) = {
        let mut g = lock(&s);
        let (resp, stall) = route(&s.base, &mut g, &method, &uri, &headers, &body);
        g.calls.push(SnCall {
            method: method.to_string(),
            path,
            status: resp.status().as_u16(),
        });
        (resp, stall)
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    resp
}

fn route(
    base: &str,
    g: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Response, Option<Duration>) {
    let call_no = g.calls.len() as u64 + 1;
    let is_insert = method == Method::POST;
    // Faults first: the rate limiter and a failing node answer before auth.
    if let Some(f) = g.faults.iter_mut().find(|f| {
        f.remaining > 0
            && call_no >= f.from_call
            && (is_insert || !matches!(f.fault, SnFault::CommitThenStall(_)))
    }) {
        f.remaining -= 1;
        match f.fault {
            SnFault::RateLimited { retry_after_secs } => {
                let mut r = envelope(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    "Rate limit exceeded for rule 'certkeeper integration'",
                );
                let h = r.headers_mut();
                h.insert(header::RETRY_AFTER, hv(&retry_after_secs.to_string()));
                h.insert("X-RateLimit-Limit", hv("1000"));
                let reset = OffsetDateTime::now_utc().unix_timestamp() + retry_after_secs as i64;
                h.insert("X-RateLimit-Reset", hv(&reset.to_string()));
                h.insert("X-RateLimit-Rule", hv("certkeeper integration"));
                return (r, None);
            }
            SnFault::Status(code) => {
                let st = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (envelope(st, "Server error", "injected fault"), None);
            }
            SnFault::CommitThenStall(d) => {
                let r = serve(base, g, method, uri, headers, body);
                return (r, Some(d));
            }
        }
    }
    (serve(base, g, method, uri, headers, body), None)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn serve(
    base: &str,
    g: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let user = match authenticate(&g.opts, headers) {
        Some(u) => u,
        None => {
            let mut r = envelope(
                StatusCode::UNAUTHORIZED,
                "User Not Authenticated",
                "Required to provide Auth information",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, hv("BASIC realm=\"Service-now\""));
            return r;
        }
    };
    let path = uri.path();
    let rest = path
        .strip_prefix("/api/now/table/")
        .or_else(|| path.strip_prefix("/api/now/v2/table/"));
    let Some(rest) = rest else {
        return envelope(
            StatusCode::BAD_REQUEST,
            "Requested URI does not represent any resource",
            path,
        );
    };
    let mut parts = rest.splitn(2, '/');
    let table = parts.next().unwrap_or("");
    let record = parts.next().filter(|s| !s.is_empty());
    if table != "incident" && table != "sys_journal_field" {
        return envelope(StatusCode::BAD_REQUEST, "Invalid table", table);
    }
    if !user.itil {
        return envelope(
            StatusCode::FORBIDDEN,
            "Operation Failed",
            "ACL Exception: the user lacks the itil role",
        );
    }
    let params = parse_urlencoded(uri.query().unwrap_or(""));
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let view = View {
        fields: param("sysparm_fields").map(|f| {
            f.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        display: match param("sysparm_display_value") {
            Some("true") => Display::Labels,
            Some("all") => Display::All,
            _ => Display::Codes,
        },
        exclude_links: param("sysparm_exclude_reference_link") == Some("true"),
        base: base.to_string(),
        table: table.to_string(),
    };
    if table == "sys_journal_field" {
        if method != Method::GET {
            return envelope(
                StatusCode::FORBIDDEN,
                "Operation Failed",
                "sys_journal_field is read-only here",
            );
        }
        let rows: Vec<BTreeMap<String, String>> = g
            .journal
            .iter()
            .map(|j| {
                BTreeMap::from([
                    ("sys_id".to_string(), j.sys_id.clone()),
                    ("element_id".into(), j.element_id.clone()),
                    ("element".into(), j.element.clone()),
                    ("value".into(), j.value.clone()),
                    ("name".into(), "incident".into()),
                    ("sys_created_on".into(), j.created_on.clone()),
                    ("sys_created_by".into(), j.created_by.clone()),
                ])
            })
            .collect();
        return list(&g.opts, &rows, JOURNAL_FIELDS, &[], &params, uri, &view);
    }
    match (method.clone(), record) {
        (Method::GET, None) => list(
            &g.opts,
            &g.incidents,
            INCIDENT_FIELDS,
            &g.journal,
            &params,
            uri,
            &view,
        ),
        (Method::GET, Some(id)) => match g.incidents.iter().find(|r| r["sys_id"] == id) {
            Some(r) => ok_json(
                StatusCode::OK,
                json!({"result": view.render(r, &g.journal)}),
            ),
            None => no_record(),
        },
        (Method::POST, None) => insert(g, &user, body, &view),
        (Method::PATCH | Method::PUT, Some(id)) => update(g, &user, id, body, &view),
        (Method::DELETE, Some(id)) => {
            let before = g.incidents.len();
            g.incidents.retain(|r| r["sys_id"] != id);
            if g.incidents.len() == before {
                no_record()
            } else {
                StatusCode::NO_CONTENT.into_response()
            }
        }
        _ => envelope(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not Supported",
            method.as_str(),
        ),
    }
}

fn no_record() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "No Record found",
        "Record doesn't exist or ACL restricts the record retrieval",
    )
}

fn authenticate(opts: &SnOptions, headers: &HeaderMap) -> Option<SnUser> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(b64.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (name, pw) = text.split_once(':')?;
    opts.users
        .iter()
        .find(|u| u.name == name && u.password == pw)
        .cloned()
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// `a=1&b=x%20y` → pairs (`+` is a space), as forms and queries are encoded.
pub(crate) fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Display {
    Codes,
    Labels,
    All,
}

struct View {
    fields: Option<Vec<String>>,
    display: Display,
    exclude_links: bool,
    base: String,
    table: String,
}

impl View {
    fn render(&self, r: &BTreeMap<String, String>, journal: &[JournalEntry]) -> Value {
        let mut out = Map::new();
        let names: Vec<String> = match &self.fields {
            Some(f) => f.clone(),
            None => r.keys().cloned().collect(),
        };
        for name in names {
            let Some(code) = r.get(&name) else { continue };
            let mut code = code.clone();
            let mut label = label(&name, &code).unwrap_or_else(|| code.clone());
            if self.table == "incident" && JOURNAL_ELEMENTS.contains(&name.as_str()) {
                // Journal fields read as "" unless display values are asked for.
                code = String::new();
                label = journal_text(journal, &r["sys_id"], &name);
            }
            let v = match self.display {
                Display::Codes => {
                    if REFERENCE_FIELDS.contains(&name.as_str())
                        && !self.exclude_links
                        && !code.is_empty()
                    {
                        json!({"link": format!("{}/api/now/table/sys_user/{code}", self.base), "value": code})
                    } else {
                        Value::String(code)
                    }
                }
                Display::Labels => Value::String(label),
                Display::All => json!({"display_value": label, "value": code}),
            };
            out.insert(name, v);
        }
        Value::Object(out)
    }
}

fn journal_text(journal: &[JournalEntry], sys_id: &str, element: &str) -> String {
    journal
        .iter()
        .rev()
        .filter(|j| j.element_id == sys_id && j.element == element)
        .map(|j| {
            let kind = if element == "work_notes" {
                "Work notes"
            } else {
                "Additional comments"
            };
            format!(
                "{} - {} ({kind})\n{}\n\n",
                j.created_on, j.created_by, j.value
            )
        })
        .collect()
}

fn label(field: &str, code: &str) -> Option<String> {
    let l = match (field, code) {
        ("state" | "incident_state", "1") => "New",
        ("state" | "incident_state", "2") => "In Progress",
        ("state" | "incident_state", "3") => "On Hold",
        ("state" | "incident_state", "6") => "Resolved",
        ("state" | "incident_state", "7") => "Closed",
        ("state" | "incident_state", "8") => "Canceled",
        ("priority", "1") => "1 - Critical",
        ("priority", "2") => "2 - High",
        ("priority", "3") => "3 - Moderate",
        ("priority", "4") => "4 - Low",
        ("priority", "5") => "5 - Planning",
        ("impact" | "urgency", "1") => "1 - High",
        ("impact" | "urgency", "2") => "2 - Medium",
        ("impact" | "urgency", "3") => "3 - Low",
        _ => return None,
    };
    Some(l.to_string())
}

// ---- encoded queries ----

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Like(String),
    NotLike(String),
    StartsWith(String),
    EndsWith(String),
    IsEmpty,
    IsNotEmpty,
}

#[derive(Debug, Clone)]
struct Cond {
    field: String,
    op: Op,
}

#[derive(Debug, Default)]
struct Query {
    /// AND of ORs.
    groups: Vec<Vec<Cond>>,
    order: Vec<(String, bool)>,
    /// A condition named a field the table does not have.
    unknown_field: bool,
}

/// Split on `^`, with `^^` a literal `^`.
fn split_query(q: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '^' {
            if chars.peek() == Some(&'^') {
                chars.next();
                if let Some(s) = out.last_mut() {
                    s.push('^');
                }
            } else {
                out.push(String::new());
            }
        } else if let Some(s) = out.last_mut() {
            s.push(c);
        }
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn parse_query(q: &str, known: &[&str], unqueryable: &[String]) -> Result<Query, String> {
    let mut query = Query::default();
    for seg in split_query(q) {
        if let Some(f) = seg.strip_prefix("ORDERBYDESC") {
            query.order.push((f.to_string(), true));
            continue;
        }
        if let Some(f) = seg.strip_prefix("ORDERBY") {
            query.order.push((f.to_string(), false));
            continue;
        }
        if seg == "EQ" || seg == "NQ" {
            continue;
        }
        let (or, cond_text) = match seg.strip_prefix("OR") {
            Some(rest) => (true, rest.to_string()),
            None => (false, seg.clone()),
        };
        let field_len = cond_text
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(cond_text.len());
        let (field, rest) = cond_text.split_at(field_len);
        let op = parse_op(rest).ok_or_else(|| format!("cannot parse the condition {seg:?}"))?;
        let cond = Cond {
            field: field.to_string(),
            op,
        };
        if !is_field(known, field) || unqueryable.iter().any(|u| u == field) {
            query.unknown_field = true;
            // Ignored: the condition is dropped.
            continue;
        }
        match (or, query.groups.last_mut()) {
            (true, Some(g)) => g.push(cond),
            _ => query.groups.push(vec![cond]),
        }
    }
    Ok(query)
}

fn parse_op(rest: &str) -> Option<Op> {
    let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
    Some(if let Some(v) = rest.strip_prefix("!=") {
        Op::Ne(v.into())
    } else if let Some(v) = rest.strip_prefix('=') {
        Op::Eq(v.into())
    } else if let Some(v) = rest.strip_prefix("NOT IN") {
        Op::NotIn(list(v))
    } else if let Some(v) = rest.strip_prefix("IN") {
        Op::In(list(v))
    } else if let Some(v) = rest.strip_prefix("NOT LIKE") {
        Op::NotLike(v.into())
    } else if let Some(v) = rest.strip_prefix("LIKE") {
        Op::Like(v.into())
    } else if let Some(v) = rest.strip_prefix("STARTSWITH") {
        Op::StartsWith(v.into())
    } else if let Some(v) = rest.strip_prefix("ENDSWITH") {
        Op::EndsWith(v.into())
    } else if rest == "ISEMPTY" {
        Op::IsEmpty
    } else if rest == "ISNOTEMPTY" {
        Op::IsNotEmpty
    } else {
        return None;
    })
}

fn matches(r: &BTreeMap<String, String>, c: &Cond) -> bool {
    let v = r.get(&c.field).map(String::as_str).unwrap_or("");
    let lower = v.to_lowercase();
    match &c.op {
        Op::Eq(x) => v == x,
        Op::Ne(x) => v != x,
        Op::In(xs) => xs.iter().any(|x| x == v),
        Op::NotIn(xs) => !xs.iter().any(|x| x == v),
        Op::Like(x) => lower.contains(&x.to_lowercase()),
        Op::NotLike(x) => !lower.contains(&x.to_lowercase()),
        Op::StartsWith(x) => lower.starts_with(&x.to_lowercase()),
        Op::EndsWith(x) => lower.ends_with(&x.to_lowercase()),
        Op::IsEmpty => v.is_empty(),
        Op::IsNotEmpty => !v.is_empty(),
    }
}

fn list(
    opts: &SnOptions,
    rows: &[BTreeMap<String, String>],
    known: &[&str],
    journal: &[JournalEntry],
    params: &[(String, String)],
    uri: &Uri,
    view: &View,
) -> Response {
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let q = match parse_query(
        param("sysparm_query").unwrap_or(""),
        known,
        &opts.unqueryable,
    ) {
        Ok(q) => q,
        Err(e) => return envelope(StatusCode::BAD_REQUEST, "Invalid query", &e),
    };
    let mut hits: Vec<&BTreeMap<String, String>> =
        if q.unknown_field && opts.invalid_query_returns_no_rows {
            Vec::new()
        } else {
            rows.iter()
                .filter(|r| q.groups.iter().all(|g| g.iter().any(|c| matches(r, c))))
                .collect()
        };
    for (f, desc) in q.order.iter().rev() {
        hits.sort_by(|a, b| {
            let (x, y) = (
                a.get(f).cloned().unwrap_or_default(),
                b.get(f).cloned().unwrap_or_default(),
            );
            let o = match (x.parse::<i64>(), y.parse::<i64>()) {
                (Ok(i), Ok(j)) if f != "number" => i.cmp(&j),
                _ => x.cmp(&y),
            };
            if *desc { o.reverse() } else { o }
        });
    }
    let total = hits.len();
    let limit: usize = param("sysparm_limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10000);
    let offset: usize = param("sysparm_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let page: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| view.render(r, journal))
        .collect();
    let mut resp = ok_json(StatusCode::OK, json!({ "result": page }));
    let h = resp.headers_mut();
    h.insert("X-Total-Count", hv(&total.to_string()));
    if limit > 0 {
        let link = |off: usize, rel: &str| {
            let mut ps: Vec<(String, String)> = params
                .iter()
                .filter(|(k, _)| k != "sysparm_offset" && k != "sysparm_limit")
                .cloned()
                .collect();
            ps.push(("sysparm_limit".into(), limit.to_string()));
            ps.push(("sysparm_offset".into(), off.to_string()));
            let qs: Vec<String> = ps
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            format!(
                "<{}{}?{}>;rel=\"{rel}\"",
                view.base,
                uri.path(),
                qs.join("&")
            )
        };
        let last = total.saturating_sub(1).checked_div(limit).unwrap_or(0) * limit;
        let mut links = vec![link(0, "first")];
        if offset > 0 {
            links.push(link(offset.saturating_sub(limit), "prev"));
        }
        if offset + limit < total {
            links.push(link(offset + limit, "next"));
        }
        links.push(link(last, "last"));
        h.insert(header::LINK, hv(&links.join(",")));
    }
    resp
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- writes ----

/// The body of a write as string fields (numbers and booleans become strings, as
/// ServiceNow converts them).
#[allow(
    clippy::result_large_err,
    reason = "the error is the simulator's answer itself; its size does not matter in a test server"
)]
fn write_fields(body: &Bytes) -> Result<BTreeMap<String, String>, Response> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        envelope(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            &format!("The payload is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(o) = v else {
        return Err(envelope(
            StatusCode::BAD_REQUEST,
            "Exception while reading request",
            "The payload is not a JSON object",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, v) in o {
        let s = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => {
                return Err(envelope(
                    StatusCode::BAD_REQUEST,
                    "Exception while reading request",
                    &format!("field {k}: a value must be a string"),
                ));
            }
        };
        out.insert(k, s);
    }
    Ok(out)
}

/// The derived fields: priority from the matrix, `incident_state` and `active`.
fn derive(r: &mut BTreeMap<String, String>) {
    let n = |k: &str| {
        r.get(k)
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|v| (1..=3).contains(v))
            .unwrap_or(3)
    };
    let (i, u) = (n("impact"), n("urgency"));
    r.insert("impact".into(), i.to_string());
    r.insert("urgency".into(), u.to_string());
    r.insert("priority".into(), (i + u - 1).to_string());
    let state = r.get("state").cloned().unwrap_or_else(|| "1".into());
    r.insert("incident_state".into(), state.clone());
    r.insert(
        "active".into(),
        (!matches!(state.as_str(), "7" | "8")).to_string(),
    );
}

fn policy_violation(r: &BTreeMap<String, String>) -> Option<Vec<&'static str>> {
    let empty = |k: &str| r.get(k).is_none_or(|v| v.trim().is_empty());
    let missing: Vec<&'static str> = match r.get("state").map(String::as_str) {
        Some("3") => ["hold_reason"].into_iter().filter(|f| empty(f)).collect(),
        Some("6") => ["close_code", "close_notes"]
            .into_iter()
            .filter(|f| empty(f))
            .collect(),
        _ => Vec::new(),
    };
    (!missing.is_empty()).then_some(missing)
}

fn data_policy(fields: &[String]) -> Response {
    envelope(
        StatusCode::FORBIDDEN,
        "Operation Failed",
        &format!(
            "Data Policy Exception: The following fields are mandatory: {}",
            fields.join(", ")
        ),
    )
}

impl Inner {
    fn next_sys_id(&mut self) -> String {
        // splitmix64, twice.
        let mut next = || {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        format!("{:016x}{:016x}", next(), next())
    }

    fn append_journal(&mut self, sys_id: &str, element: &str, value: &str, by: &str) {
        let id = self.next_sys_id();
        self.journal.push(JournalEntry {
            sys_id: id,
            element_id: sys_id.into(),
            element: element.into(),
            value: value.into(),
            created_on: now_sn(),
            created_by: by.into(),
        });
    }
}

fn insert(g: &mut Inner, user: &SnUser, body: &Bytes, view: &View) -> Response {
    let fields = match write_fields(body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut r: BTreeMap<String, String> = BTreeMap::new();
    let mut notes = Vec::new();
    for (k, v) in fields {
        if JOURNAL_ELEMENTS.contains(&k.as_str()) {
            if !v.is_empty() {
                notes.push((k, v));
            }
        } else if is_field(INCIDENT_FIELDS, &k) {
            // Unknown fields in a write are ignored, as the Table API does.
            r.insert(k, v);
        }
    }
    let missing: Vec<String> = g
        .opts
        .mandatory_on_insert
        .iter()
        .filter(|f| r.get(*f).is_none_or(|v| v.trim().is_empty()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return data_policy(&missing);
    }
    r.entry("state".into()).or_insert_with(|| "1".into());
    if g.opts.strict
        && let Some(m) = policy_violation(&r)
    {
        return data_policy(&m.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }
    let sys_id = g.next_sys_id();
    let now = now_sn();
    r.insert("sys_id".into(), sys_id.clone());
    r.insert("number".into(), format!("INC{:07}", g.next_number));
    g.next_number += 1;
    r.insert("reopen_count".into(), "0".into());
    r.insert("sys_created_on".into(), now.clone());
    r.insert("sys_updated_on".into(), now);
    r.insert("sys_created_by".into(), user.name.clone());
    r.insert("sys_updated_by".into(), user.name.clone());
    r.insert("sys_mod_count".into(), "0".into());
    for f in ["work_notes", "comments"] {
        r.insert(f.into(), String::new());
    }
    derive(&mut r);
    for (k, v) in notes {
        g.append_journal(&sys_id, &k, &v, &user.name);
    }
    let out = view.render(&r, &g.journal);
    g.incidents.push(r);
    let mut resp = ok_json(StatusCode::CREATED, json!({ "result": out }));
    resp.headers_mut().insert(
        header::LOCATION,
        hv(&format!("{}/api/now/table/incident/{sys_id}", view.base)),
    );
    resp
}

fn update(g: &mut Inner, user: &SnUser, id: &str, body: &Bytes, view: &View) -> Response {
    let fields = match write_fields(body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(idx) = g.incidents.iter().position(|r| r["sys_id"] == id) else {
        return no_record();
    };
    let old = g.incidents[idx].clone();
    let old_state = old.get("state").cloned().unwrap_or_default();
    if matches!(old_state.as_str(), "7" | "8") && !user.admin {
        return match g.opts.closed_writes {
            ClosedWrites::Forbidden => envelope(
                StatusCode::FORBIDDEN,
                "Operation Failed",
                "ACL Exception Update Failed due to security constraints",
            ),
            ClosedWrites::SilentlyIgnored => ok_json(
                StatusCode::OK,
                json!({ "result": view.render(&old, &g.journal) }),
            ),
        };
    }
    let mut r = old.clone();
    let mut notes = Vec::new();
    for (k, v) in fields {
        if JOURNAL_ELEMENTS.contains(&k.as_str()) {
            if !v.is_empty() {
                notes.push((k, v));
            }
        } else if is_field(INCIDENT_FIELDS, &k)
            && !matches!(
                k.as_str(),
                "sys_id" | "number" | "sys_created_on" | "reopen_count"
            )
        {
            r.insert(k, v);
        }
    }
    let new_state = r.get("state").cloned().unwrap_or_default();
    if g.opts.strict
        && new_state != old_state
        && let Some(m) = policy_violation(&r)
    {
        return data_policy(&m.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }
    let now = now_sn();
    if old_state == "6" && matches!(new_state.as_str(), "1" | "2" | "3") {
        let n: u64 = r
            .get("reopen_count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        r.insert("reopen_count".into(), (n + 1).to_string());
        r.insert("reopened_by".into(), user.name.clone());
        r.insert("reopened_time".into(), now.clone());
    }
    if new_state == "6" && old_state != "6" {
        r.insert("resolved_at".into(), now.clone());
    }
    let mods: u64 = r
        .get("sys_mod_count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    r.insert("sys_mod_count".into(), (mods + 1).to_string());
    r.insert("sys_updated_on".into(), now);
    r.insert("sys_updated_by".into(), user.name.clone());
    derive(&mut r);
    for (k, v) in notes {
        g.append_journal(id, &k, &v, &user.name);
    }
    let out = view.render(&r, &g.journal);
    g.incidents[idx] = r;
    ok_json(StatusCode::OK, json!({ "result": out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_and_parse() {
        assert_eq!(
            split_query("a=1^b=x^^y^ORc=2"),
            vec!["a=1", "b=x^y", "ORc=2"]
        );
        let q = parse_query(
            "state=1^ORstate=2^nosuch=3^ORDERBYDESCnumber",
            INCIDENT_FIELDS,
            &[],
        )
        .unwrap();
        assert_eq!(q.groups.len(), 1);
        assert_eq!(q.groups[0].len(), 2);
        assert!(q.unknown_field);
        assert_eq!(q.order, vec![("number".to_string(), true)]);
        assert!(parse_query("state~1", INCIDENT_FIELDS, &[]).is_err());
    }

    #[test]
    fn base64_and_forms_decode() {
        assert_eq!(base64_decode("dTpw").unwrap(), b"u:p");
        assert_eq!(base64_decode("dTpwdw==").unwrap(), b"u:pw");
        assert_eq!(base64_decode("dTpwd3g=").unwrap(), b"u:pwx");
        assert_eq!(
            parse_urlencoded("a=x%20y+z&b=%7B%22k%22%7D&c"),
            vec![
                ("a".into(), "x y z".into()),
                ("b".into(), "{\"k\"}".into()),
                ("c".into(), String::new())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
