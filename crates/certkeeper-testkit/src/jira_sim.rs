//! A Jira simulator (Cloud or Data Center) for the Jira connector tests, following
//! `shared/contracts/ticketing.md` §3: an in-process axum server on `127.0.0.1:0`.
//!
//! - Auth: Basic `email:api_token` and `Bearer <PAT>` against configured credentials;
//!   401 with the Jira envelope `{"errorMessages":[…],"errors":{}}` otherwise.
//! - `/rest/api/3` (Cloud only; description and comment bodies must be ADF) and
//!   `/rest/api/2` (plain strings): `myself`, `project/{key}`, `priority`,
//!   `issuetype`, `POST issue` (201 `{id,key,self}`, labels checked), `GET/PUT
//!   issue/{key}` (priority changes), `issue/{key}/comment` (201),
//!   `issue/{key}/transitions` (GET with `to.statusCategory`, POST 204).
//! - Search: a JQL subset (`project = X AND labels = "…" ORDER BY created DESC|ASC`;
//!   anything else is a 400). Cloud: `/search/jql` with `nextPageToken`/`isLast` and
//!   an eventual-consistency switch hiding issues younger than N ms; the old `/search`
//!   answers 410. Data Center: `/rest/api/2/search` with `startAt`/`total`.
//! - Workflow: To Do (new) → Start Progress → In Progress (indeterminate) → Done
//!   (done, sets a resolution) → Reopen → To Do (clears it); a switch removes Reopen.
//! - A switch makes searches ignore the labels clause, to prove the client post-filters.
//! - Faults: 429 + `Retry-After` after N calls, 5xx after N calls, and a create that
//!   commits and then stalls past the client's timeout.

#![allow(
    clippy::result_large_err,
    reason = "the simulator's errors are whole HTTP responses; their size does not matter in a test server"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Which Jira the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    DataCenter,
}

/// What the simulator starts with.
#[derive(Debug, Clone)]
pub struct JiraSimConfig {
    pub flavour: Flavour,
    /// The one project's key.
    pub project: String,
    /// Basic credentials: (email, API token).
    pub basic: Vec<(String, String)>,
    /// Bearer personal access tokens.
    pub pats: Vec<String>,
    /// The largest page a search returns, whatever `maxResults` asks.
    pub page_cap: usize,
}

impl JiraSimConfig {
    /// A simulator with project OPS, the user `bot@example.test` / `api-token-1` and
    /// the PAT `pat-1`.
    pub fn new(flavour: Flavour) -> Self {
        JiraSimConfig {
            flavour,
            project: "OPS".into(),
            basic: vec![("bot@example.test".into(), "api-token-1".into())],
            pats: vec!["pat-1".into()],
            page_cap: 50,
        }
    }
}

const PRIORITIES: [&str; 5] = ["Highest", "High", "Medium", "Low", "Lowest"];
const ISSUE_TYPES: [&str; 3] = ["Task", "Bug", "Story"];
const RESOLUTIONS: [&str; 4] = ["Done", "Won't Do", "Duplicate", "Cannot Reproduce"];

/// A workflow status: name, id, category key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    name: &'static str,
    id: &'static str,
    category: &'static str,
}

const TO_DO: Status = Status {
    name: "To Do",
    id: "10000",
    category: "new",
};
const IN_PROGRESS: Status = Status {
    name: "In Progress",
    id: "3",
    category: "indeterminate",
};
const DONE: Status = Status {
    name: "Done",
    id: "10001",
    category: "done",
};

/// A workflow transition: id, name, target.
struct Transition {
    id: &'static str,
    name: &'static str,
    to: Status,
}

/// A comment as stored (plain text; ADF bodies are flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimComment {
    pub body: String,
    /// Carried `sd.public.comment` `{internal: true}`.
    pub internal: bool,
}

/// An issue as the simulator holds it.
#[derive(Debug, Clone)]
pub struct SimIssue {
    pub id: u64,
    pub key: String,
    pub summary: String,
    pub description: String,
    pub issue_type: String,
    pub priority: String,
    pub labels: Vec<String>,
    pub status: String,
    pub status_category: String,
    pub resolution: Option<String>,
    pub created: OffsetDateTime,
    pub comments: Vec<SimComment>,
    created_at: Instant,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct SimCall {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub at: Instant,
}

struct Faults {
    /// Calls still let through before the 429s start, and how many 429s.
    rate_skip: u32,
    rate_times: u32,
    retry_after: String,
    /// Calls still let through before the failures start, how many, and the status.
    fail_skip: u32,
    fail_times: u32,
    fail_status: u16,
    /// The next create commits and then answers only after this long.
    stall_create: Option<Duration>,
}

struct Inner {
    cfg: JiraSimConfig,
    base: String,
    issues: Vec<SimIssue>,
    next_id: u64,
    next_num: u64,
    hide_fresh: Duration,
    allow_reopen: bool,
    sloppy_labels: bool,
    faults: Faults,
    calls: Vec<SimCall>,
}

/// A running simulator; stops when dropped.
pub struct JiraSim {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JiraSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JiraSim {
    /// Start on `127.0.0.1:0` (inside a tokio runtime).
    pub async fn start(cfg: JiraSimConfig) -> anyhow::Result<JiraSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            cfg,
            base: format!("http://{addr}"),
            issues: Vec::new(),
            next_id: 10000,
            next_num: 1,
            hide_fresh: Duration::ZERO,
            allow_reopen: true,
            sloppy_labels: false,
            faults: Faults {
                rate_skip: 0,
                rate_times: 0,
                retry_after: "1".into(),
                fail_skip: 0,
                fail_times: 0,
                fail_status: 503,
                stall_create: None,
            },
            calls: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(JiraSim { addr, inner, task })
    }

    /// The site URL (`http://127.0.0.1:port`), as a connector's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler poisons nothing we cannot go on with.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cloud's eventual consistency: searches miss issues younger than this.
    pub fn hide_fresh_issues(&self, d: Duration) {
        self.lock().hide_fresh = d;
    }

    /// Searches ignore `labels = …` clauses (a misbehaving index): only the client's
    /// post-filter keeps other issues out.
    pub fn ignore_labels_in_search(&self, on: bool) {
        self.lock().sloppy_labels = on;
    }

    /// Remove (false) or restore (true) the Done → Reopen transition.
    pub fn allow_reopen(&self, on: bool) {
        self.lock().allow_reopen = on;
    }

    /// After `after` more calls, answer the next `times` calls with 429 and
    /// `Retry-After: retry_after`.
    pub fn rate_limit(&self, after: u32, times: u32, retry_after: &str) {
        let mut g = self.lock();
        g.faults.rate_skip = after;
        g.faults.rate_times = times;
        g.faults.retry_after = retry_after.into();
    }

    /// After `after` more calls, answer the next `times` calls with `status` (a 5xx).
    pub fn fail(&self, after: u32, times: u32, status: u16) {
        let mut g = self.lock();
        g.faults.fail_skip = after;
        g.faults.fail_times = times;
        g.faults.fail_status = status;
    }

    /// The next `POST /issue` commits the issue and answers only after `d`.
    pub fn stall_next_create(&self, d: Duration) {
        self.lock().faults.stall_create = Some(d);
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }

    /// Every issue held.
    pub fn issues(&self) -> Vec<SimIssue> {
        self.lock().issues.clone()
    }

    /// One issue by key.
    pub fn issue(&self, key: &str) -> Option<SimIssue> {
        self.lock().issues.iter().find(|i| i.key == key).cloned()
    }

    /// Move an issue to a status by hand (as a person would), with a resolution for
    /// Done.
    pub fn set_status(&self, key: &str, status: &str, resolution: Option<&str>) {
        let st = [TO_DO, IN_PROGRESS, DONE]
            .into_iter()
            .find(|s| s.name == status)
            .expect("a workflow status");
        let mut g = self.lock();
        let i = g
            .issues
            .iter_mut()
            .find(|i| i.key == key)
            .expect("an issue");
        set(i, st, resolution.map(str::to_string));
    }
}

fn set(i: &mut SimIssue, st: Status, resolution: Option<String>) {
    i.status = st.name.into();
    i.status_category = st.category.into();
    i.resolution = if st.category == "done" {
        Some(resolution.unwrap_or_else(|| "Done".into()))
    } else {
        None
    };
}

fn status_of(i: &SimIssue) -> Status {
    [TO_DO, IN_PROGRESS, DONE]
        .into_iter()
        .find(|s| s.name == i.status)
        .unwrap_or(TO_DO)
}

fn transitions(from: Status, allow_reopen: bool) -> Vec<Transition> {
    match from.category {
        "new" => vec![Transition {
            id: "11",
            name: "Start Progress",
            to: IN_PROGRESS,
        }],
        "indeterminate" => vec![Transition {
            id: "21",
            name: "Done",
            to: DONE,
        }],
        _ if allow_reopen => vec![Transition {
            id: "31",
            name: "Reopen",
            to: TO_DO,
        }],
        _ => vec![],
    }
}

fn err(status: StatusCode, messages: &[&str], errors: Value) -> Response {
    (
        status,
        axum::Json(json!({ "errorMessages": messages, "errors": errors })),
    )
        .into_response()
}

fn field_err(field: &str, msg: &str) -> Response {
    let mut errors = serde_json::Map::new();
    errors.insert(field.into(), Value::String(msg.into()));
    err(StatusCode::BAD_REQUEST, &[], Value::Object(errors))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (resp, stall) = {
        let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
        let (resp, stall) = route(&mut g, &method, &uri, &headers, &body);
        g.calls.push(SimCall {
            method: method.to_string(),
            path: uri.path().to_string(),
            status: resp.status().as_u16(),
            at: Instant::now(),
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
    // Faults first, as a proxy or the rate limiter in front would answer.
    let f = &mut g.faults;
    if f.rate_times > 0 {
        if f.rate_skip > 0 {
            f.rate_skip -= 1;
        } else {
            f.rate_times -= 1;
            let mut r = err(
                StatusCode::TOO_MANY_REQUESTS,
                &["Rate limit exceeded."],
                json!({}),
            );
            r.headers_mut().insert(
                "retry-after",
                f.retry_after.parse().expect("a header value"),
            );
            r.headers_mut().insert(
                "x-ratelimit-remaining",
                "0".parse().expect("a header value"),
            );
            return (r, None);
        }
    }
    if f.fail_times > 0 {
        if f.fail_skip > 0 {
            f.fail_skip -= 1;
        } else {
            f.fail_times -= 1;
            let status =
                StatusCode::from_u16(f.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (err(status, &["Service unavailable"], json!({})), None);
        }
    }
    if !authenticated(&g.cfg, headers) {
        return (
            err(
                StatusCode::UNAUTHORIZED,
                &["You are not authenticated. Authentication required to perform this operation."],
                json!({}),
            ),
            None,
        );
    }
    let path = uri.path();
    let (v3, rest) = if let Some(r) = path.strip_prefix("/rest/api/3/") {
        (true, r)
    } else if let Some(r) = path.strip_prefix("/rest/api/2/") {
        (false, r)
    } else {
        return (err(StatusCode::NOT_FOUND, &["Not found"], json!({})), None);
    };
    if v3 && g.cfg.flavour == Flavour::DataCenter {
        return (
            err(StatusCode::NOT_FOUND, &["No API v3 here"], json!({})),
            None,
        );
    }
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let json_body = || -> Result<Value, Response> {
        serde_json::from_slice(body).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                &[&format!("Unexpected character: {e}")],
                json!({}),
            )
        })
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let resp = match (method.as_str(), segs.as_slice()) {
        ("GET", ["myself"]) => axum::Json(json!({
            "accountId": "5b10a2844c20165700ede21g",
            "emailAddress": g.cfg.basic.first().map(|b| b.0.clone()),
            "displayName": "certkeeper bot",
            "active": true,
        }))
        .into_response(),
        ("GET", ["project", key]) => {
            if *key == g.cfg.project {
                axum::Json(json!({ "id": "10000", "key": key, "name": "Operations" }))
                    .into_response()
            } else {
                err(
                    StatusCode::NOT_FOUND,
                    &[&format!("No project could be found with key '{key}'.")],
                    json!({}),
                )
            }
        }
        ("GET", ["priority"]) => axum::Json(
            PRIORITIES
                .iter()
                .enumerate()
                .map(|(n, p)| json!({ "id": (n + 1).to_string(), "name": p }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        ("GET", ["issuetype"]) => axum::Json(
            ISSUE_TYPES
                .iter()
                .enumerate()
                .map(|(n, t)| json!({ "id": (10001 + n).to_string(), "name": t }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        ("POST", ["issue"]) => match json_body() {
            Ok(b) => match create(g, v3, &b) {
                Ok(r) => {
                    let stall = g.faults.stall_create.take();
                    return (r, stall);
                }
                Err(r) => r,
            },
            Err(r) => r,
        },
        ("GET", ["issue", key]) => match find(g, key) {
            Some(i) => axum::Json(issue_json(&g.base, v3, i, query.get("fields"))).into_response(),
            None => not_found_issue(),
        },
        ("PUT", ["issue", key]) => match json_body() {
            Ok(b) => update(g, key, &b),
            Err(r) => r,
        },
        ("POST", ["issue", key, "comment"]) => match json_body() {
            Ok(b) => comment(g, v3, key, &b),
            Err(r) => r,
        },
        ("GET", ["issue", key, "comment"]) => match find(g, key) {
            Some(i) => axum::Json(json!({
                "total": i.comments.len(),
                "comments": i.comments.iter().enumerate().map(|(n, c)| json!({
                    "id": (n + 1).to_string(), "body": body_out(v3, &c.body)
                })).collect::<Vec<_>>(),
            }))
            .into_response(),
            None => not_found_issue(),
        },
        ("GET", ["issue", key, "transitions"]) => match find(g, key) {
            Some(i) => {
                let with_fields = query
                    .get("expand")
                    .is_some_and(|e| e.contains("transitions.fields"));
                let list: Vec<Value> = transitions(status_of(i), g.allow_reopen)
                    .iter()
                    .map(|t| {
                        let mut v = json!({
                            "id": t.id, "name": t.name, "hasScreen": false,
                            "to": {
                                "name": t.to.name, "id": t.to.id,
                                "statusCategory": { "key": t.to.category, "name": t.to.name },
                            },
                        });
                        if with_fields {
                            v["fields"] = if t.to.category == "done" {
                                json!({ "resolution": {
                                    "required": false, "name": "Resolution",
                                    "allowedValues": RESOLUTIONS.iter().map(|r| json!({"name": r})).collect::<Vec<_>>(),
                                }})
                            } else {
                                json!({})
                            };
                        }
                        v
                    })
                    .collect();
                axum::Json(json!({ "expand": "transitions", "transitions": list })).into_response()
            }
            None => not_found_issue(),
        },
        ("POST", ["issue", key, "transitions"]) => match json_body() {
            Ok(b) => transition(g, v3, key, &b),
            Err(r) => r,
        },
        (_, ["search"]) if g.cfg.flavour == Flavour::Cloud => err(
            StatusCode::GONE,
            &[
                "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API.",
            ],
            json!({}),
        ),
        ("GET" | "POST", ["search"]) => {
            let params = match params(method, &query, body) {
                Ok(p) => p,
                Err(r) => return (r, None),
            };
            search_dc(g, v3, &params)
        }
        ("GET" | "POST", ["search", "jql"]) if g.cfg.flavour == Flavour::Cloud => {
            let params = match params(method, &query, body) {
                Ok(p) => p,
                Err(r) => return (r, None),
            };
            search_cloud(g, v3, &params)
        }
        _ => err(
            StatusCode::NOT_FOUND,
            &["null for uri: the resource does not exist"],
            json!({}),
        ),
    };
    (resp, None)
}

fn authenticated(cfg: &JiraSimConfig, headers: &HeaderMap) -> bool {
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some(b) = h.strip_prefix("Basic ") {
        return cfg.basic.iter().any(|(email, token)| {
            openssl::base64::encode_block(format!("{email}:{token}").as_bytes()) == b.trim()
        });
    }
    if let Some(t) = h.strip_prefix("Bearer ") {
        return cfg.pats.iter().any(|p| p == t.trim());
    }
    false
}

fn not_found_issue() -> Response {
    err(
        StatusCode::NOT_FOUND,
        &["Issue does not exist or you do not have permission to see it."],
        json!({}),
    )
}

fn find<'a>(g: &'a Inner, key: &str) -> Option<&'a SimIssue> {
    g.issues
        .iter()
        .find(|i| i.key == key || i.id.to_string() == key)
}

fn find_mut<'a>(g: &'a mut Inner, key: &str) -> Option<&'a mut SimIssue> {
    g.issues
        .iter_mut()
        .find(|i| i.key == key || i.id.to_string() == key)
}

/// A rich-text value: a string on v2, an ADF document on v3 (flattened to text).
fn body_in(v3: bool, v: &Value) -> Result<String, &'static str> {
    if !v3 {
        return v
            .as_str()
            .map(str::to_string)
            .ok_or("Operation value must be a string");
    }
    let is_doc = v.get("type").and_then(Value::as_str) == Some("doc")
        && v.get("version").and_then(Value::as_u64) == Some(1)
        && v.get("content").is_some_and(Value::is_array);
    if !is_doc {
        return Err(
            "Operation value must be an Atlassian Document (see the Atlassian Document Format)",
        );
    }
    let mut paragraphs = Vec::new();
    for block in v["content"].as_array().into_iter().flatten() {
        let mut text = String::new();
        for node in block
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match node.get("type").and_then(Value::as_str) {
                Some("text") => {
                    text.push_str(node.get("text").and_then(Value::as_str).unwrap_or(""))
                }
                Some("hardBreak") => text.push('\n'),
                _ => return Err("Unsupported ADF node"),
            }
        }
        paragraphs.push(text);
    }
    Ok(paragraphs.join("\n"))
}

fn body_out(v3: bool, text: &str) -> Value {
    if !v3 {
        return Value::String(text.into());
    }
    json!({ "type": "doc", "version": 1, "content": text.split('\n').map(|l| {
        if l.is_empty() { json!({"type": "paragraph", "content": []}) }
        else { json!({"type": "paragraph", "content": [{"type": "text", "text": l}]}) }
    }).collect::<Vec<_>>() })
}

fn jira_date(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    t.format(&f).unwrap_or_default()
}

fn issue_json(base: &str, v3: bool, i: &SimIssue, fields: Option<&String>) -> Value {
    let st = status_of(i);
    let all = json!({
        "summary": i.summary,
        "description": body_out(v3, &i.description),
        "issuetype": { "name": i.issue_type },
        "priority": { "name": i.priority },
        "labels": i.labels,
        "created": jira_date(i.created),
        "status": { "name": st.name, "id": st.id, "statusCategory": { "key": st.category, "name": st.name } },
        "resolution": i.resolution.as_ref().map(|r| json!({ "name": r })),
        "comment": { "total": i.comments.len() },
    });
    let selected = match fields.map(|f| f.as_str()) {
        None | Some("*all") | Some("") => all,
        Some(list) => {
            let mut m = serde_json::Map::new();
            for f in list.split(',') {
                if let Some(v) = all.get(f.trim()) {
                    m.insert(f.trim().into(), v.clone());
                }
            }
            Value::Object(m)
        }
    };
    let v = if v3 { 3 } else { 2 };
    json!({
        "id": i.id.to_string(),
        "key": i.key,
        "self": format!("{base}/rest/api/{v}/issue/{}", i.id),
        "fields": selected,
    })
}

fn create(g: &mut Inner, v3: bool, b: &Value) -> Result<Response, Response> {
    let f = b
        .get("fields")
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, &["No fields given"], json!({})))?;
    if f.pointer("/project/key").and_then(Value::as_str) != Some(g.cfg.project.as_str()) {
        return Err(field_err("project", "valid project is required"));
    }
    let issue_type = f
        .pointer("/issuetype/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !ISSUE_TYPES.contains(&issue_type) {
        return Err(field_err("issuetype", "valid issue type is required"));
    }
    let summary = f.get("summary").and_then(Value::as_str).unwrap_or("");
    if summary.trim().is_empty() {
        return Err(field_err(
            "summary",
            "You must specify a summary of the issue.",
        ));
    }
    if summary.len() > 255 {
        return Err(field_err(
            "summary",
            "Summary must be less than 255 characters.",
        ));
    }
    let description = match f.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(d) => body_in(v3, d).map_err(|m| field_err("description", m))?,
    };
    let priority = match f.pointer("/priority/name") {
        None => "Medium".to_string(),
        Some(p) => {
            let p = p.as_str().unwrap_or("");
            if !PRIORITIES.contains(&p) {
                return Err(field_err(
                    "priority",
                    &format!("Priority name '{p}' is not valid"),
                ));
            }
            p.to_string()
        }
    };
    let labels = labels_in(f.get("labels"))?;
    let id = g.next_id;
    let key = format!("{}-{}", g.cfg.project, g.next_num);
    g.next_id += 1;
    g.next_num += 1;
    g.issues.push(SimIssue {
        id,
        key: key.clone(),
        summary: summary.into(),
        description,
        issue_type: issue_type.into(),
        priority,
        labels,
        status: TO_DO.name.into(),
        status_category: TO_DO.category.into(),
        resolution: None,
        created: OffsetDateTime::now_utc(),
        comments: Vec::new(),
        created_at: Instant::now(),
    });
    let v = if v3 { 3 } else { 2 };
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id.to_string(), "key": key, "self": format!("{}/rest/api/{v}/issue/{id}", g.base) })),
    )
        .into_response())
}

fn labels_in(v: Option<&Value>) -> Result<Vec<String>, Response> {
    let mut out = Vec::new();
    for l in v.and_then(Value::as_array).into_iter().flatten() {
        let l = l
            .as_str()
            .ok_or_else(|| field_err("labels", "Labels must be strings"))?;
        if l.is_empty() || l.contains(char::is_whitespace) {
            return Err(field_err(
                "labels",
                &format!("The label '{l}' contains spaces which is invalid."),
            ));
        }
        if l.len() > 255 {
            return Err(field_err(
                "labels",
                "The label must not exceed 255 characters.",
            ));
        }
        out.push(l.to_string());
    }
    Ok(out)
}

fn update(g: &mut Inner, key: &str, b: &Value) -> Response {
    let Some(i) = find_mut(g, key) else {
        return not_found_issue();
    };
    let Some(f) = b.get("fields").and_then(Value::as_object) else {
        return err(StatusCode::BAD_REQUEST, &["No fields given"], json!({}));
    };
    for (name, v) in f {
        match name.as_str() {
            "priority" => {
                let p = v.pointer("/name").and_then(Value::as_str).unwrap_or("");
                if !PRIORITIES.contains(&p) {
                    return field_err("priority", &format!("Priority name '{p}' is not valid"));
                }
                i.priority = p.into();
            }
            "labels" => match labels_in(Some(v)) {
                Ok(l) => i.labels = l,
                Err(r) => return r,
            },
            "summary" => match v.as_str() {
                Some(s) if !s.trim().is_empty() => i.summary = s.into(),
                _ => return field_err("summary", "You must specify a summary of the issue."),
            },
            other => {
                return field_err(
                    other,
                    &format!(
                        "Field '{other}' cannot be set. It is not on the appropriate screen, or unknown."
                    ),
                );
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

fn internal_flag(b: &Value) -> bool {
    b.get("properties")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|p| {
            p.get("key").and_then(Value::as_str) == Some("sd.public.comment")
                && p.pointer("/value/internal").and_then(Value::as_bool) == Some(true)
        })
}

fn comment(g: &mut Inner, v3: bool, key: &str, b: &Value) -> Response {
    let Some(i) = find_mut(g, key) else {
        return not_found_issue();
    };
    let text = match b.get("body").map(|v| body_in(v3, v)) {
        Some(Ok(t)) if !t.trim().is_empty() => t,
        Some(Err(m)) => return field_err("comment", m),
        _ => return field_err("comment", "Comment body can not be empty!"),
    };
    i.comments.push(SimComment {
        body: text.clone(),
        internal: internal_flag(b),
    });
    let n = i.comments.len();
    (
        StatusCode::CREATED,
        axum::Json(json!({ "id": n.to_string(), "body": body_out(v3, &text) })),
    )
        .into_response()
}

fn transition(g: &mut Inner, v3: bool, key: &str, b: &Value) -> Response {
    let allow_reopen = g.allow_reopen;
    let Some(i) = find_mut(g, key) else {
        return not_found_issue();
    };
    let id = b
        .pointer("/transition/id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let available = transitions(status_of(i), allow_reopen);
    let Some(t) = available.iter().find(|t| t.id == id) else {
        return err(
            StatusCode::BAD_REQUEST,
            &[&format!(
                "Transition id '{id}' is not valid for this issue."
            )],
            json!({}),
        );
    };
    let resolution = match b.pointer("/fields/resolution/name") {
        None => None,
        Some(r) => {
            let r = r.as_str().unwrap_or("");
            if t.to.category != "done" || !RESOLUTIONS.contains(&r) {
                return field_err(
                    "resolution",
                    &format!("Resolution '{r}' cannot be set here."),
                );
            }
            Some(r.to_string())
        }
    };
    let mut notes = Vec::new();
    for c in b
        .pointer("/update/comment")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match c.pointer("/add/body").map(|v| body_in(v3, v)) {
            Some(Ok(text)) => notes.push(SimComment {
                body: text,
                internal: internal_flag(&c["add"]),
            }),
            Some(Err(m)) => return field_err("comment", m),
            None => return field_err("comment", "Comment body can not be empty!"),
        }
    }
    set(i, t.to, resolution);
    i.comments.extend(notes);
    StatusCode::NO_CONTENT.into_response()
}

struct SearchParams {
    jql: String,
    fields: Option<String>,
    max: usize,
    start_at: usize,
    next_page_token: Option<String>,
}

fn params(
    method: &Method,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<SearchParams, Response> {
    let get = |k: &str| -> Option<String> { query.get(k).cloned() };
    let (jql, fields, max, start, token) = if method == Method::POST {
        let b: Value = serde_json::from_slice(body).map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                &["Invalid request payload"],
                json!({}),
            )
        })?;
        (
            b.get("jql").and_then(Value::as_str).map(str::to_string),
            b.get("fields").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            b.get("maxResults")
                .and_then(Value::as_u64)
                .map(|n| n.to_string()),
            b.get("startAt")
                .and_then(Value::as_u64)
                .map(|n| n.to_string()),
            b.get("nextPageToken")
                .and_then(Value::as_str)
                .map(str::to_string),
        )
    } else {
        (
            get("jql"),
            get("fields"),
            get("maxResults"),
            get("startAt"),
            get("nextPageToken"),
        )
    };
    let num = |v: Option<String>, name: &str, default: usize| -> Result<usize, Response> {
        match v {
            None => Ok(default),
            Some(s) => s.parse().map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    &[&format!("The value of '{name}' is not a number.")],
                    json!({}),
                )
            }),
        }
    };
    Ok(SearchParams {
        jql: jql.unwrap_or_default(),
        fields,
        max: num(max, "maxResults", 50)?,
        start_at: num(start, "startAt", 0)?,
        next_page_token: token,
    })
}

/// The matching issues, in the query's order, or a 400.
fn run_jql(g: &Inner, jql: &str, hide_fresh: bool) -> Result<Vec<SimIssue>, Response> {
    let q = parse_jql(jql).map_err(|m| {
        err(
            StatusCode::BAD_REQUEST,
            &[&format!("Error in the JQL Query: {m}")],
            json!({}),
        )
    })?;
    for p in &q.projects {
        if *p != g.cfg.project {
            return Err(err(
                StatusCode::BAD_REQUEST,
                &[&format!(
                    "The value '{p}' does not exist for the field 'project'."
                )],
                json!({}),
            ));
        }
    }
    let now = Instant::now();
    let mut hits: Vec<SimIssue> = g
        .issues
        .iter()
        .filter(|i| g.sloppy_labels || q.labels.iter().all(|l| i.labels.contains(l)))
        .filter(|i| !hide_fresh || now.duration_since(i.created_at) >= g.hide_fresh)
        .cloned()
        .collect();
    // Created times can tie within a millisecond; the id breaks ties as Jira's does.
    hits.sort_by_key(|i| (i.created, i.id));
    if q.desc {
        hits.reverse();
    }
    Ok(hits)
}

fn search_dc(g: &Inner, v3: bool, p: &SearchParams) -> Response {
    let hits = match run_jql(g, &p.jql, false) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let max = p.max.min(g.cfg.page_cap);
    let page: Vec<Value> = hits
        .iter()
        .skip(p.start_at)
        .take(max)
        .map(|i| issue_json(&g.base, v3, i, p.fields.as_ref()))
        .collect();
    axum::Json(
        json!({ "startAt": p.start_at, "maxResults": max, "total": hits.len(), "issues": page }),
    )
    .into_response()
}

fn search_cloud(g: &Inner, v3: bool, p: &SearchParams) -> Response {
    let hits = match run_jql(g, &p.jql, true) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let start = match &p.next_page_token {
        None => 0,
        Some(t) => match t.strip_prefix("sim-page-").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    &["The provided next page token is invalid or expired."],
                    json!({}),
                );
            }
        },
    };
    let max = p.max.clamp(1, g.cfg.page_cap);
    let page: Vec<Value> = hits
        .iter()
        .skip(start)
        .take(max)
        .map(|i| issue_json(&g.base, v3, i, p.fields.as_ref()))
        .collect();
    let end = start + page.len();
    let mut v = json!({ "issues": page, "isLast": end >= hits.len() });
    if end < hits.len() {
        v["nextPageToken"] = Value::String(format!("sim-page-{end}"));
    }
    axum::Json(v).into_response()
}

/// The JQL subset: `field = value` clauses joined by AND (fields `project` and
/// `labels`), then an optional `ORDER BY created [ASC|DESC]`.
#[derive(Debug, Default, PartialEq)]
struct Jql {
    projects: Vec<String>,
    labels: Vec<String>,
    desc: bool,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Eq,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            out.push(Tok::Eq);
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\\') => v.push(chars.next().ok_or("unterminated escape")?),
                    Some(q) if q == c => break,
                    Some(x) => v.push(x),
                    None => return Err("unterminated string".into()),
                }
            }
            out.push(Tok::Quoted(v));
        } else if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' {
            let mut v = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_alphanumeric() || x == '-' || x == '_' || x == '.' {
                    v.push(x);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(v));
        } else {
            return Err(format!("the character '{c}' is not understood here"));
        }
    }
    Ok(out)
}

fn parse_jql(s: &str) -> Result<Jql, String> {
    let toks = tokens(s)?;
    let mut q = Jql::default();
    let mut i = 0;
    let word =
        |t: Option<&Tok>, w: &str| matches!(t, Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w));
    loop {
        let field = match toks.get(i) {
            Some(Tok::Word(f)) if !f.eq_ignore_ascii_case("order") => f.to_ascii_lowercase(),
            None if i == 0 => return Err("the query is empty".into()),
            other => return Err(format!("expected a field, got {other:?}")),
        };
        if toks.get(i + 1) != Some(&Tok::Eq) {
            return Err(format!(
                "expected '=' after '{field}' (only = is supported)"
            ));
        }
        let value = match toks.get(i + 2) {
            Some(Tok::Word(v)) | Some(Tok::Quoted(v)) => v.clone(),
            other => return Err(format!("expected a value, got {other:?}")),
        };
        match field.as_str() {
            "project" => q.projects.push(value),
            "labels" => q.labels.push(value),
            other => return Err(format!("Field '{other}' is not supported by the simulator")),
        }
        i += 3;
        if word(toks.get(i), "and") {
            i += 1;
            continue;
        }
        break;
    }
    if word(toks.get(i), "order") {
        if !word(toks.get(i + 1), "by") || !word(toks.get(i + 2), "created") {
            return Err("only ORDER BY created is supported".into());
        }
        i += 3;
        if word(toks.get(i), "desc") {
            q.desc = true;
            i += 1;
        } else if word(toks.get(i), "asc") {
            i += 1;
        }
    }
    if i != toks.len() {
        return Err(format!("unexpected {:?}", toks[i]));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jql_subset() {
        let q = parse_jql(r#"project = OPS AND labels = "cm1-ab" ORDER BY created DESC"#).unwrap();
        assert_eq!(
            q,
            Jql {
                projects: vec!["OPS".into()],
                labels: vec!["cm1-ab".into()],
                desc: true
            }
        );
        assert!(!parse_jql("project = OPS").unwrap().desc);
        for bad in [
            "",
            "project ~ OPS",
            "summary = x",
            "project = OPS OR labels = x",
            "project = OPS ORDER BY updated",
            "labels = \"open",
            "project = OPS AND",
        ] {
            assert!(parse_jql(bad).is_err(), "{bad}");
        }
    }
}
