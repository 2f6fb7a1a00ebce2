//! An in-process ServiceDesk Plus (on-premise, API v3) simulator for requests and
//! their notes, following the simulator checklist of `shared/contracts/ticketing.md` §2:
//!
//! 1. A missing or wrong `authtoken` gives 401/4022.
//! 2. `input_data` is read from the query (GET) or the form body; invalid JSON gives
//!    400/4000.
//! 3. A status catalogue with configurable names, each with `in_progress` and
//!    `stop_timer`, and a priority catalogue; an unknown name gives 400/4001 naming
//!    the field.
//! 4. A search engine for the contract's conditions, `udf_fields.<name>`,
//!    `status.name`, `values[]`, `children` and `logical_operator`; paging with
//!    `has_more_rows`; `total_count` only with `get_total_count`.
//! 5. `display_id` counts up from 1, `id` is a long digit string; notes per request;
//!    Open on a Resolved or Closed request sets `is_reopened`; `allow_reopen_closed`.
//! 6. Mandatory fields per template give 4012; faults 429/4015 after N calls and
//!    500/4004 ([`SdpFault`]). A create answers 200 or 201 ([`SdpOptions::create_status`]).
//!    `PUT …/close` closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::servicenow_sim::parse_urlencoded;

/// A status of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpStatus {
    pub id: String,
    pub name: String,
    pub in_progress: bool,
    pub stop_timer: bool,
}

impl SdpStatus {
    fn new(id: u32, name: &str, in_progress: bool, stop_timer: bool) -> Self {
        SdpStatus {
            id: format!("{}", 100_000_000_000_000u64 + u64::from(id)),
            name: name.into(),
            in_progress,
            stop_timer,
        }
    }
}

/// How a refused reopen of a Closed or Canceled request answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReopenRefusal {
    /// 403/4002: not allowed for this technician.
    NotAllowed4002,
    /// 400/4009: the status is not editable.
    NonEditable4009,
}

/// Settings of a simulated server.
#[derive(Debug, Clone)]
pub struct SdpOptions {
    /// Valid technician keys.
    pub keys: Vec<String>,
    pub statuses: Vec<SdpStatus>,
    pub priorities: Vec<String>,
    /// Additional fields of requests (API names).
    pub udf_fields: Vec<String>,
    /// Mandatory fields per template (`group`, `requester`, `udf_fields.<name>` …);
    /// requests without a template use "Default Request".
    pub mandatory_by_template: BTreeMap<String, Vec<String>>,
    /// Whether Closed and Canceled requests may be set back to an open status.
    pub allow_reopen_closed: bool,
    pub reopen_refusal: ReopenRefusal,
    /// 200 or 201 on a create (builds differ).
    pub create_status: u16,
    /// A build where `udf_fields.<name>` is not searchable: such a criterion is
    /// ignored (every row matches it), so only the client's post-filter helps.
    pub udf_search_ignored: bool,
}

impl Default for SdpOptions {
    fn default() -> Self {
        SdpOptions {
            keys: vec!["0D2C5A17-1E0B-4C4E-9F1A-5B6E7C8D9E0F".into()],
            statuses: vec![
                SdpStatus::new(1, "Open", true, false),
                SdpStatus::new(2, "On Hold", true, true),
                SdpStatus::new(3, "In Progress", true, false),
                SdpStatus::new(4, "Resolved", false, false),
                SdpStatus::new(5, "Closed", false, false),
                SdpStatus::new(6, "Canceled", false, false),
            ],
            priorities: vec![
                "Low".into(),
                "Normal".into(),
                "Medium".into(),
                "High".into(),
            ],
            udf_fields: vec!["udf_sline_1201".into()],
            mandatory_by_template: BTreeMap::new(),
            allow_reopen_closed: true,
            reopen_refusal: ReopenRefusal::NotAllowed4002,
            create_status: 201,
            udf_search_ignored: false,
        }
    }
}

/// An injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpFault {
    /// 429 with inner code 4015 and `Retry-After: <secs>`.
    RateLimited { retry_after_secs: u64 },
    /// 500 with inner code 4004.
    Internal,
    /// A bare HTTP status (503 from a proxy, say) with no SDP envelope.
    Status(u16),
    /// A create that stores the request, then answers only after this long.
    CommitThenStall(Duration),
}

#[derive(Debug, Clone)]
struct PendingFault {
    from_call: u64,
    remaining: u32,
    fault: SdpFault,
}

/// A note of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpNote {
    pub id: String,
    pub description: String,
    pub show_to_requester: bool,
    pub created_ms: i64,
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SdpRequest {
    pub id: String,
    pub display_id: u64,
    pub subject: String,
    pub description: String,
    pub status: String,
    pub priority: Option<String>,
    pub requester: String,
    pub group: Option<String>,
    pub template: String,
    pub created_ms: i64,
    pub is_reopened: bool,
    pub udf_fields: BTreeMap<String, String>,
    pub resolution: Option<String>,
    pub closure_info: Option<Value>,
    pub notes: Vec<SdpNote>,
}

/// A call the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpCall {
    pub method: String,
    pub path: String,
    pub status: u16,
}

struct Inner {
    opts: SdpOptions,
    requests: Vec<SdpRequest>,
    faults: Vec<PendingFault>,
    calls: Vec<SdpCall>,
    next_display: u64,
    next_id: u64,
    last_ms: i64,
}

/// A running simulator; it stops when the handle is dropped.
pub struct SdpSim {
    shared: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SdpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a simulator on 127.0.0.1 (a free port).
pub async fn start(opts: SdpOptions) -> std::io::Result<SdpSim> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Mutex::new(Inner {
        opts,
        requests: Vec::new(),
        faults: Vec::new(),
        calls: Vec::new(),
        next_display: 1,
        next_id: 1,
        last_ms: 0,
    }));
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
    Ok(SdpSim { shared, addr, task })
}

fn lock(s: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock is a simulator bug; the data is still usable.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl SdpSim {
    /// `http://127.0.0.1:<port>`, the server URL (the API is under `/api/v3/`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the requests.
    pub fn requests(&self) -> Vec<SdpRequest> {
        lock(&self.shared).requests.clone()
    }

    /// One request by id.
    pub fn request(&self, id: &str) -> Option<SdpRequest> {
        lock(&self.shared)
            .requests
            .iter()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<SdpCall> {
        lock(&self.shared).calls.clone()
    }

    /// How many calls with this method were received.
    pub fn call_count(&self, method: &str) -> usize {
        lock(&self.shared)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Inject `fault` for `times` calls, starting `after` calls from now (0: the next).
    pub fn inject(&self, after: u64, fault: SdpFault, times: u32) {
        let mut g = lock(&self.shared);
        let from_call = g.calls.len() as u64 + after + 1;
        g.faults.push(PendingFault {
            from_call,
            remaining: times,
            fault,
        });
    }

    /// Change the settings while running.
    pub fn configure(&self, f: impl FnOnce(&mut SdpOptions)) {
        f(&mut lock(&self.shared).opts);
    }

    /// Set a request's status directly (an administrator's move, no rules).
    pub fn force_status(&self, id: &str, status: &str) {
        let mut g = lock(&self.shared);
        if let Some(r) = g.requests.iter_mut().find(|r| r.id == id) {
            r.status = status.into();
        }
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.manageengine.sdp.v3+json",
        )],
        body.to_string(),
    )
        .into_response()
}

/// An error: outer 4000, one inner message.
fn error(status: StatusCode, code: u32, field: Option<&str>, message: &str) -> Response {
    let mut m = json!({"status_code": code, "type": "failed", "message": message});
    if let Some(f) = field {
        m["field"] = f.into();
    }
    let outer = match code {
        4022 | 4015 | 4004 | 4007 | 4002 => code,
        _ => 4000,
    };
    reply(
        status,
        json!({"response_status": {"status_code": outer, "status": "failed", "messages": [m]}}),
    )
}

fn success() -> Value {
    json!({"status_code": 2000, "status": "success"})
}

async fn handle(
    s: Arc<Mutex<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (resp, stall) = {
        let mut g = lock(&s);
        let (resp, stall) = route(&mut g, &method, &uri, &headers, &body);
        g.calls.push(SdpCall {
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
    g: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Response, Option<Duration>) {
    let call_no = g.calls.len() as u64 + 1;
    let is_create =
        method == Method::POST && uri.path().trim_end_matches('/') == "/api/v3/requests";
    if let Some(f) = g.faults.iter_mut().find(|f| {
        f.remaining > 0
            && call_no >= f.from_call
            && (is_create || !matches!(f.fault, SdpFault::CommitThenStall(_)))
    }) {
        f.remaining -= 1;
        match f.fault {
            SdpFault::RateLimited { retry_after_secs } => {
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    4015,
                    None,
                    "API rate limit reached",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, hv(&retry_after_secs.to_string()));
                return (r, None);
            }
            SdpFault::Internal => {
                return (
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        4004,
                        None,
                        "Internal error",
                    ),
                    None,
                );
            }
            SdpFault::Status(code) => {
                let st = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return ((st, "Service Unavailable").into_response(), None);
            }
            SdpFault::CommitThenStall(d) => return (serve(g, method, uri, headers, body), Some(d)),
        }
    }
    (serve(g, method, uri, headers, body), None)
}

fn serve(g: &mut Inner, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response {
    let key = headers.get("authtoken").and_then(|v| v.to_str().ok());
    if !key.is_some_and(|k| g.opts.keys.iter().any(|x| x == k)) {
        return error(
            StatusCode::UNAUTHORIZED,
            4022,
            None,
            "Invalid API key received",
        );
    }
    // input_data: the query on GET, the form body otherwise (a query is accepted too).
    let mut pairs = parse_urlencoded(uri.query().unwrap_or(""));
    if method != Method::GET {
        if let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            && !ct.starts_with("application/x-www-form-urlencoded")
            && !body.is_empty()
        {
            return error(
                StatusCode::BAD_REQUEST,
                4000,
                None,
                "the body must be application/x-www-form-urlencoded with input_data",
            );
        }
        pairs.extend(parse_urlencoded(&String::from_utf8_lossy(body)));
    }
    let input = match pairs.iter().find(|(k, _)| k == "input_data") {
        Some((_, v)) => match serde_json::from_str::<Value>(v) {
            Ok(v) if v.is_object() => v,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    4000,
                    Some("input_data"),
                    "input_data is not valid JSON",
                );
            }
        },
        None => json!({}),
    };
    let path = uri.path().trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/api/v3/requests") else {
        return error(StatusCode::NOT_FOUND, 4007, None, "Invalid URL");
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (method.clone(), segs.as_slice()) {
        (Method::GET, []) => search(g, &input),
        (Method::POST, []) => create(g, &input),
        (Method::GET, [id]) => match g.requests.iter().find(|r| r.id == *id) {
            Some(r) => reply(
                StatusCode::OK,
                json!({"request": render(&g.opts, r, None), "response_status": success()}),
            ),
            None => not_found(),
        },
        (Method::PUT, [id]) => update(g, id, &input),
        (Method::PUT, [id, "close"]) => close(g, id, &input),
        (Method::POST, [id, "notes"]) => add_note(g, id, &input),
        (Method::GET, [id, "notes"]) => match g.requests.iter().find(|r| r.id == *id) {
            Some(r) => {
                let notes: Vec<Value> = r.notes.iter().map(render_note).collect();
                reply(
                    StatusCode::OK,
                    json!({"notes": notes, "list_info": {"has_more_rows": false, "row_count": notes.len()}, "response_status": [success()]}),
                )
            }
            None => not_found(),
        },
        _ => error(StatusCode::NOT_FOUND, 4007, None, "Invalid URL"),
    }
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, 4007, None, "Resource not found")
}

fn now_ms(g: &mut Inner) -> i64 {
    // Strictly increasing, so that creation order is a total order.
    let ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    g.last_ms = ms.max(g.last_ms + 1);
    g.last_ms
}

fn time_value(ms: i64) -> Value {
    let display = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[month repr:short] [day], [year] [hour repr:12]:[minute] [period]"
            ))
            .ok()
        })
        .unwrap_or_default();
    json!({"value": ms.to_string(), "display_value": display})
}

fn render_note(n: &SdpNote) -> Value {
    json!({
        "id": n.id,
        "description": n.description,
        "show_to_requester": n.show_to_requester,
        "created_time": time_value(n.created_ms),
    })
}

fn render(opts: &SdpOptions, r: &SdpRequest, fields: Option<&[String]>) -> Value {
    let status = opts.statuses.iter().find(|s| s.name == r.status);
    let status = match status {
        Some(s) => {
            json!({"id": s.id, "name": s.name, "in_progress": s.in_progress, "stop_timer": s.stop_timer})
        }
        None => json!({"name": r.status}),
    };
    let mut v = json!({
        "id": r.id,
        "display_id": r.display_id.to_string(),
        "subject": r.subject,
        "description": r.description,
        "status": status,
        "priority": r.priority.as_ref().map(|p| json!({"name": p})),
        "requester": {"name": r.requester},
        "group": r.group.as_ref().map(|g| json!({"name": g})),
        "template": {"name": r.template},
        "created_time": time_value(r.created_ms),
        "is_reopened": r.is_reopened,
        "udf_fields": r.udf_fields,
        "resolution": r.resolution.as_ref().map(|c| json!({"content": c})),
        "has_notes": !r.notes.is_empty(),
    });
    if let (Some(fields), Value::Object(o)) = (fields, &mut v) {
        o.retain(|k, _| k == "id" || fields.iter().any(|f| f == k));
    }
    v
}

fn check_mandatory(opts: &SdpOptions, r: &SdpRequest) -> Option<Response> {
    let required = opts.mandatory_by_template.get(&r.template)?;
    for f in required {
        let present = match f.as_str() {
            "subject" => !r.subject.trim().is_empty(),
            "description" => !r.description.trim().is_empty(),
            "priority" => r.priority.is_some(),
            "group" => r.group.is_some(),
            "requester" => !r.requester.is_empty(),
            other => match other.strip_prefix("udf_fields.") {
                Some(u) => r.udf_fields.get(u).is_some_and(|v| !v.is_empty()),
                None => true,
            },
        };
        if !present {
            return Some(error(
                StatusCode::BAD_REQUEST,
                4012,
                Some(f),
                "Value for the field is mandatory",
            ));
        }
    }
    None
}

/// Reads `{"name": …}` (or a bare string) of a lookup field.
fn lookup_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Applies the fields of `input` to `r`; an error answer on a bad name.
#[allow(
    clippy::result_large_err,
    reason = "the error is the simulator's answer itself; its size does not matter in a test server"
)]
fn apply(opts: &SdpOptions, r: &mut SdpRequest, input: &Value) -> Result<(), Response> {
    let Some(o) = input.as_object() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            4000,
            Some("request"),
            "request is not an object",
        ));
    };
    for (k, v) in o {
        match k.as_str() {
            "subject" => match v.as_str() {
                Some(s) => r.subject = s.into(),
                None => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        4021,
                        Some("subject"),
                        "subject must be a string",
                    ));
                }
            },
            "description" => r.description = v.as_str().unwrap_or_default().into(),
            "status" => {
                let name = lookup_name(v).unwrap_or_default();
                if !opts
                    .statuses
                    .iter()
                    .any(|s| s.name.eq_ignore_ascii_case(&name))
                {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        4001,
                        Some("status"),
                        &format!("no status named {name:?}"),
                    ));
                }
                r.status = opts
                    .statuses
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(&name))
                    .map(|s| s.name.clone())
                    .unwrap_or(name);
            }
            "priority" => {
                let name = lookup_name(v).unwrap_or_default();
                match opts
                    .priorities
                    .iter()
                    .find(|p| p.eq_ignore_ascii_case(&name))
                {
                    Some(p) => r.priority = Some(p.clone()),
                    None => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            4001,
                            Some("priority"),
                            &format!("no priority named {name:?}"),
                        ));
                    }
                }
            }
            "requester" => r.requester = lookup_name(v).unwrap_or_default(),
            "group" => r.group = lookup_name(v),
            "template" => r.template = lookup_name(v).unwrap_or_default(),
            "resolution" => {
                r.resolution = v.get("content").and_then(Value::as_str).map(str::to_string);
            }
            "udf_fields" => {
                let Some(u) = v.as_object() else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        4021,
                        Some("udf_fields"),
                        "udf_fields must be an object",
                    ));
                };
                for (name, val) in u {
                    if !opts.udf_fields.contains(name) {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            4001,
                            Some(&format!("udf_fields.{name}")),
                            "no such additional field",
                        ));
                    }
                    r.udf_fields
                        .insert(name.clone(), val.as_str().unwrap_or_default().into());
                }
            }
            "id" | "display_id" | "created_time" | "is_reopened" => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    4014,
                    Some(k),
                    "the field is read-only",
                ));
            }
            // Other fields (impact, urgency, category …) are accepted and not kept.
            _ => {}
        }
    }
    Ok(())
}

fn create(g: &mut Inner, input: &Value) -> Response {
    let Some(req) = input.get("request") else {
        return error(
            StatusCode::BAD_REQUEST,
            4012,
            Some("request"),
            "input_data has no request",
        );
    };
    let mut r = SdpRequest {
        id: String::new(),
        display_id: 0,
        subject: String::new(),
        description: String::new(),
        status: g
            .opts
            .statuses
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "Open".into()),
        priority: None,
        requester: "technician".into(),
        group: None,
        template: "Default Request".into(),
        created_ms: 0,
        is_reopened: false,
        udf_fields: BTreeMap::new(),
        resolution: None,
        closure_info: None,
        notes: Vec::new(),
    };
    if let Err(e) = apply(&g.opts, &mut r, req) {
        return e;
    }
    if r.subject.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            4012,
            Some("subject"),
            "Value for the field is mandatory",
        );
    }
    if let Some(e) = check_mandatory(&g.opts, &r) {
        return e;
    }
    r.id = format!("{}", 234_000_000_000_000u64 + g.next_id * 1_000 + 7);
    g.next_id += 1;
    r.display_id = g.next_display;
    g.next_display += 1;
    r.created_ms = now_ms(g);
    let out = render(&g.opts, &r, None);
    g.requests.push(r);
    let status = StatusCode::from_u16(g.opts.create_status).unwrap_or(StatusCode::CREATED);
    reply(
        status,
        json!({"request": out, "response_status": success()}),
    )
}

fn update(g: &mut Inner, id: &str, input: &Value) -> Response {
    let Some(idx) = g.requests.iter().position(|r| r.id == id) else {
        return not_found();
    };
    let Some(req) = input.get("request") else {
        return error(
            StatusCode::BAD_REQUEST,
            4012,
            Some("request"),
            "input_data has no request",
        );
    };
    let old = g.requests[idx].clone();
    let mut r = old.clone();
    if let Err(e) = apply(&g.opts, &mut r, req) {
        return e;
    }
    let kind = |name: &str| {
        g.opts
            .statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.in_progress)
    };
    let reopening = kind(&old.status) == Some(false) && kind(&r.status) == Some(true);
    if reopening {
        let closed_like = !old.status.eq_ignore_ascii_case("Resolved");
        if closed_like && !g.opts.allow_reopen_closed {
            return match g.opts.reopen_refusal {
                ReopenRefusal::NotAllowed4002 => error(
                    StatusCode::FORBIDDEN,
                    4002,
                    Some("status"),
                    "A closed request cannot be reopened",
                ),
                ReopenRefusal::NonEditable4009 => error(
                    StatusCode::BAD_REQUEST,
                    4009,
                    Some("status"),
                    "The field is not editable for a closed request",
                ),
            };
        }
        r.is_reopened = true;
    }
    if let Some(e) = check_mandatory(&g.opts, &r) {
        return e;
    }
    let out = render(&g.opts, &r, None);
    g.requests[idx] = r;
    reply(
        StatusCode::OK,
        json!({"request": out, "response_status": success()}),
    )
}

fn close(g: &mut Inner, id: &str, input: &Value) -> Response {
    let Some(idx) = g.requests.iter().position(|r| r.id == id) else {
        return not_found();
    };
    let Some(closed) = g
        .opts
        .statuses
        .iter()
        .find(|s| s.name == "Closed")
        .map(|s| s.name.clone())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            4001,
            Some("status"),
            "no Closed status",
        );
    };
    let r = &mut g.requests[idx];
    r.status = closed;
    r.closure_info = input.pointer("/request/closure_info").cloned();
    let out = render(&g.opts, &g.requests[idx], None);
    reply(
        StatusCode::OK,
        json!({"request": out, "response_status": success()}),
    )
}

fn add_note(g: &mut Inner, id: &str, input: &Value) -> Response {
    let Some(note) = input.get("note") else {
        return error(
            StatusCode::BAD_REQUEST,
            4012,
            Some("note"),
            "input_data has no note",
        );
    };
    let Some(desc) = note
        .get("description")
        .and_then(Value::as_str)
        .filter(|d| !d.trim().is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            4012,
            Some("description"),
            "Value for the field is mandatory",
        );
    };
    let ms = now_ms(g);
    let n_id = format!("{}", 345_000_000_000_000u64 + ms as u64 % 1_000_000_000);
    let Some(r) = g.requests.iter_mut().find(|r| r.id == id) else {
        return not_found();
    };
    let n = SdpNote {
        id: n_id,
        description: desc.into(),
        show_to_requester: note
            .get("show_to_requester")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        created_ms: ms,
    };
    let out = render_note(&n);
    r.notes.push(n);
    reply(
        StatusCode::OK,
        json!({"note": out, "response_status": success()}),
    )
}

// ---- search ----

const KNOWN_FIELDS: &[&str] = &[
    "id",
    "display_id",
    "subject",
    "description",
    "status",
    "status.name",
    "status.id",
    "status.in_progress",
    "priority",
    "priority.name",
    "requester",
    "requester.name",
    "group",
    "group.name",
    "template",
    "template.name",
    "created_time",
    "is_reopened",
];

/// The value of `field` in a rendered request, as text.
fn value_of(r: &Value, field: &str) -> Option<String> {
    let mut cur = r;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    let leaf = match cur {
        Value::Object(o) => o.get("name").or_else(|| o.get("value"))?,
        v => v,
    };
    match leaf {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

struct Search<'a> {
    opts: &'a SdpOptions,
}

impl Search<'_> {
    /// Checks the criteria, naming the first bad field or condition.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the simulator's answer itself; its size does not matter in a test server"
    )]
    fn check(&self, c: &Value) -> Result<(), Response> {
        if let Some(field) = c.get("field").and_then(Value::as_str) {
            let ok = KNOWN_FIELDS.contains(&field)
                || field
                    .strip_prefix("udf_fields.")
                    .is_some_and(|u| self.opts.udf_fields.iter().any(|f| f == u));
            if !ok {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    4001,
                    Some(field),
                    "no such field to search on",
                ));
            }
            let cond = c.get("condition").and_then(Value::as_str).unwrap_or("");
            if condition(cond).is_none() {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    4001,
                    Some("condition"),
                    &format!("unknown condition {cond:?}"),
                ));
            }
        }
        if let Some(ch) = c.get("children").and_then(Value::as_array) {
            for x in ch {
                self.check(x)?;
            }
        }
        Ok(())
    }

    /// One criterion (and its children) on one request.
    fn eval(&self, c: &Value, r: &Value) -> bool {
        let mut acc = match c.get("field").and_then(Value::as_str) {
            Some(field) => self.cond(c, field, r),
            None => true,
        };
        let mut first = c.get("field").is_none();
        for ch in c
            .get("children")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let v = self.eval(ch, r);
            if first {
                acc = v;
                first = false;
            } else if is_or(ch) {
                acc = acc || v;
            } else {
                acc = acc && v;
            }
        }
        acc
    }

    fn cond(&self, c: &Value, field: &str, r: &Value) -> bool {
        if self.opts.udf_search_ignored && field.starts_with("udf_fields.") {
            return true;
        }
        let Some(op) = condition(c.get("condition").and_then(Value::as_str).unwrap_or("")) else {
            return false;
        };
        let mut values: Vec<String> = Vec::new();
        if let Some(v) = c.get("value") {
            values.extend(scalar_text(v));
        }
        if let Some(vs) = c.get("values").and_then(Value::as_array) {
            values.extend(vs.iter().filter_map(scalar_text));
        }
        let actual = value_of(r, field).unwrap_or_default();
        let low = actual.to_lowercase();
        let eq = |v: &String| compare(&actual, v).is_eq();
        use std::cmp::Ordering::*;
        match op {
            Cond::Is => values.iter().any(eq),
            Cond::IsNot => !values.iter().any(eq),
            Cond::Gt => values
                .first()
                .is_some_and(|v| compare(&actual, v) == Greater),
            Cond::Ge => values.first().is_some_and(|v| compare(&actual, v) != Less),
            Cond::Lt => values.first().is_some_and(|v| compare(&actual, v) == Less),
            Cond::Le => values
                .first()
                .is_some_and(|v| compare(&actual, v) != Greater),
            Cond::Between | Cond::NotBetween => {
                let inside = values.len() >= 2
                    && compare(&actual, &values[0]) != Less
                    && compare(&actual, &values[1]) != Greater;
                (op == Cond::Between) == inside
            }
            Cond::StartsWith => values.iter().any(|v| low.starts_with(&v.to_lowercase())),
            Cond::EndsWith => values.iter().any(|v| low.ends_with(&v.to_lowercase())),
            Cond::Contains => values.iter().any(|v| low.contains(&v.to_lowercase())),
            Cond::NotContains => !values.iter().any(|v| low.contains(&v.to_lowercase())),
        }
    }
}

fn is_or(c: &Value) -> bool {
    c.get("logical_operator")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("or"))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    Is,
    IsNot,
    Gt,
    Ge,
    Lt,
    Le,
    Between,
    NotBetween,
    StartsWith,
    EndsWith,
    Contains,
    NotContains,
}

fn condition(s: &str) -> Option<Cond> {
    Some(match s.to_lowercase().as_str() {
        "is" | "eq" | "=" => Cond::Is,
        "is not" | "neq" | "!=" => Cond::IsNot,
        "greater than" | "gt" => Cond::Gt,
        "greater or equal" | "gte" => Cond::Ge,
        "lesser than" | "lt" => Cond::Lt,
        "lesser or equal" | "lte" => Cond::Le,
        "between" => Cond::Between,
        "not between" => Cond::NotBetween,
        "starts with" => Cond::StartsWith,
        "ends with" => Cond::EndsWith,
        "contains" => Cond::Contains,
        "not contains" => Cond::NotContains,
        _ => return None,
    })
}

fn search(g: &mut Inner, input: &Value) -> Response {
    let li = input.get("list_info").cloned().unwrap_or_else(|| json!({}));
    let num = |k: &str, d: u64| {
        li.get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(d)
    };
    let row_count = num("row_count", 10);
    if !(1..=100).contains(&row_count) {
        return error(
            StatusCode::BAD_REQUEST,
            4001,
            Some("row_count"),
            "row_count is 1 to 100",
        );
    }
    let start = num("start_index", 1).max(1);
    let criteria: Vec<Value> = match li.get("search_criteria") {
        Some(Value::Array(a)) => a.clone(),
        Some(o @ Value::Object(_)) => vec![o.clone()],
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                4000,
                Some("search_criteria"),
                "search_criteria is an object or a list",
            );
        }
        None => Vec::new(),
    };
    let s = Search { opts: &g.opts };
    for c in &criteria {
        if let Err(e) = s.check(c) {
            return e;
        }
    }
    let rendered: Vec<Value> = g
        .requests
        .iter()
        .map(|r| render(&g.opts, r, None))
        .collect();
    let mut hits: Vec<&Value> = rendered
        .iter()
        .filter(|r| {
            let mut acc = true;
            for (i, c) in criteria.iter().enumerate() {
                let v = s.eval(c, r);
                acc = if i == 0 {
                    v
                } else if is_or(c) {
                    acc || v
                } else {
                    acc && v
                };
            }
            acc
        })
        .collect();
    let sort_field = li
        .get("sort_field")
        .and_then(Value::as_str)
        .unwrap_or("created_time");
    let desc = li
        .get("sort_order")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("desc"));
    hits.sort_by(|a, b| {
        let o = compare(
            &value_of(a, sort_field).unwrap_or_default(),
            &value_of(b, sort_field).unwrap_or_default(),
        );
        if desc { o.reverse() } else { o }
    });
    let total = hits.len() as u64;
    let fields: Option<Vec<String>> =
        li.get("fields_required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
    let page: Vec<Value> = hits
        .iter()
        .skip((start - 1) as usize)
        .take(row_count as usize)
        .map(|r| {
            let mut v = (*r).clone();
            if let (Some(f), Value::Object(o)) = (&fields, &mut v) {
                o.retain(|k, _| k == "id" || f.iter().any(|x| x == k));
            }
            v
        })
        .collect();
    let mut list_info = json!({
        "has_more_rows": start - 1 + (page.len() as u64) < total,
        "start_index": start,
        "row_count": page.len(),
        "sort_field": sort_field,
        "sort_order": if desc { "desc" } else { "asc" },
    });
    if li.get("get_total_count").and_then(Value::as_bool) == Some(true) {
        list_info["total_count"] = total.into();
    }
    reply(
        StatusCode::OK,
        json!({"requests": page, "list_info": list_info, "response_status": [success()]}),
    )
}
