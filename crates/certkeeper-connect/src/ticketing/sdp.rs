//! The ServiceDesk Plus connector (on-premise, API v3), as
//! `shared/contracts/ticketing.md` §2 describes it.
//!
//! - The technician key goes in the `authtoken` header (marked sensitive); every
//!   input is one `input_data` parameter holding JSON, in the query on GET and in a
//!   form body on POST and PUT.
//! - Success is `status_code == 2000` only; `response_status` is accepted as an
//!   object or an array. Inner codes: 4022 → `Auth`; 4015 (or HTTP 429) →
//!   `Unavailable` with the `Retry-After`; 4004 (HTTP 500) → `Unavailable` (a create
//!   is then looked up before any new try); 4002 and 4009 on a reopen → `NotAllowed`;
//!   4012, 4001 and the rest → `Rejected` naming the field.
//! - The token is stored in the additional field configured (`udf_sline_1201` by
//!   default). With `udf_field = ""` (no such field on the instance) the token goes in
//!   the description as a `[cm1-…]` marker and finds search the description for it;
//!   `find_by_key` receives only the token, so the subject cannot be part of that
//!   search. Either way the results are post-filtered.
//! - Statuses: `in_progress == true` is `Active`; completed ones map by the
//!   configured names; an unknown completed status counts as Closed.
//! - The priority sent is a name; a matrix or business rule may change it, so the one
//!   that comes back is compared and a mismatch logged as a warning (the ticket is
//!   returned: it exists).

use std::sync::Arc;

use reqwest::Url;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::servicenow::{check_token, http_client, instance_url, truncate};
use super::{NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef};

const SYSTEM: &str = "servicedesk_plus";
const ACCEPT: &str = "application/vnd.manageengine.sdp.v3+json";
/// Pages of 100 read by one find at most.
const MAX_PAGES: usize = 10;

/// Settings of the ServiceDesk Plus connector.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdpConfig {
    /// The server, `https://<host>:8080`.
    pub url: String,
    /// The technician's API key (sent as `authtoken`).
    pub technician_key: String,
    /// The API name of the single-line additional field holding the token; `""` when
    /// the instance has none (the token then goes in the description).
    #[serde(default = "default_udf")]
    pub udf_field: String,
    /// The requester of new requests (default: the owner of the key).
    #[serde(default)]
    pub requester: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// The priority name sent for High.
    #[serde(default = "default_high")]
    pub priority_high: String,
    /// The priority name sent for Highest. A default install has no priority above
    /// High, so the default is "High" as well; name the instance's own (say "Urgent").
    #[serde(default = "default_high")]
    pub priority_highest: String,
    /// The status a reopen sets.
    #[serde(default = "default_open")]
    pub reopen_status: String,
    /// The status a resolve sets.
    #[serde(default = "default_resolved")]
    pub resolve_status: String,
    /// Completed statuses that mean Resolved, Closed and Canceled (case-insensitive).
    #[serde(default = "default_resolved_names")]
    pub resolved_statuses: Vec<String>,
    #[serde(default = "default_closed_names")]
    pub closed_statuses: Vec<String>,
    #[serde(default = "default_canceled_names")]
    pub canceled_statuses: Vec<String>,
}

fn default_udf() -> String {
    "udf_sline_1201".into()
}
fn default_high() -> String {
    "High".into()
}
fn default_open() -> String {
    "Open".into()
}
fn default_resolved() -> String {
    "Resolved".into()
}
fn default_resolved_names() -> Vec<String> {
    vec!["Resolved".into()]
}
fn default_closed_names() -> Vec<String> {
    vec!["Closed".into()]
}
fn default_canceled_names() -> Vec<String> {
    vec!["Canceled".into(), "Cancelled".into()]
}

impl SdpConfig {
    /// A configuration with the defaults of everything but the server and the key.
    pub fn new(url: &str, technician_key: &str) -> Self {
        SdpConfig {
            url: url.into(),
            technician_key: technician_key.into(),
            udf_field: default_udf(),
            requester: None,
            group: None,
            priority_high: default_high(),
            priority_highest: default_high(),
            reopen_status: default_open(),
            resolve_status: default_resolved(),
            resolved_statuses: default_resolved_names(),
            closed_statuses: default_closed_names(),
            canceled_statuses: default_canceled_names(),
        }
    }
}

impl std::fmt::Debug for SdpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdpConfig")
            .field("url", &self.url)
            .field("technician_key", &"***")
            .field("udf_field", &self.udf_field)
            .field("requester", &self.requester)
            .field("group", &self.group)
            .field("priority_high", &self.priority_high)
            .field("priority_highest", &self.priority_highest)
            .field("reopen_status", &self.reopen_status)
            .field("resolve_status", &self.resolve_status)
            .field("resolved_statuses", &self.resolved_statuses)
            .field("closed_statuses", &self.closed_statuses)
            .field("canceled_statuses", &self.canceled_statuses)
            .finish()
    }
}

/// The ServiceDesk Plus connector.
#[derive(Debug, Clone)]
pub struct Sdp {
    cfg: Arc<SdpConfig>,
    /// `<server>/api/v3/requests`.
    requests: Url,
    key: reqwest::header::HeaderValue,
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// What a call was, for mapping 4002/4009.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Other,
    Reopen,
}

impl Sdp {
    pub fn new(cfg: SdpConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        let config = |message: String| TicketError::Config {
            system: SYSTEM,
            message,
        };
        let base = instance_url(SYSTEM, &cfg.url)?;
        let mut key = reqwest::header::HeaderValue::from_str(cfg.technician_key.trim())
            .ok()
            .filter(|_| !cfg.technician_key.trim().is_empty())
            .ok_or_else(|| config("technician_key is empty or not a header value".into()))?;
        key.set_sensitive(true);
        if !cfg
            .udf_field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(config(format!(
                "udf_field {:?} is not an API field name",
                cfg.udf_field
            )));
        }
        for (what, v) in [
            ("priority_high", &cfg.priority_high),
            ("priority_highest", &cfg.priority_highest),
            ("reopen_status", &cfg.reopen_status),
            ("resolve_status", &cfg.resolve_status),
        ] {
            if v.trim().is_empty() {
                return Err(config(format!("{what} is empty")));
            }
        }
        let requests = base
            .join("api/v3/requests")
            .map_err(|e| config(format!("url: {e}")))?;
        Ok(Sdp {
            client: http_client(SYSTEM, &retry)?,
            cfg: Arc::new(cfg),
            requests,
            key,
            retry,
        })
    }

    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header("authtoken", self.key.clone())
            .header(reqwest::header::ACCEPT, ACCEPT)
    }

    /// A POST or PUT with `input_data` in a form body.
    fn write(&self, method: reqwest::Method, url: Url, input: &Value) -> reqwest::RequestBuilder {
        self.request(method, url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form_body(input))
    }

    fn url(&self, id: &str, tail: &[&str]) -> Result<Url, TicketError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(TicketError::Rejected {
                system: SYSTEM,
                status: 0,
                message: format!("{id:?} is not a request id"),
            });
        }
        let mut u = self.requests.clone();
        {
            let mut seg = u.path_segments_mut().map_err(|_| TicketError::Config {
                system: SYSTEM,
                message: "url cannot be a base".into(),
            })?;
            seg.push(id);
            for t in tail {
                seg.push(t);
            }
        }
        Ok(u)
    }

    fn marker(token: &str) -> String {
        format!("[{token}]")
    }

    pub async fn find_by_key(&self, token: &str) -> Result<Vec<TicketRef>, TicketError> {
        check_token(SYSTEM, token)?;
        let udf = (!self.cfg.udf_field.is_empty()).then_some(self.cfg.udf_field.as_str());
        let criterion = match udf {
            Some(f) => {
                json!({"field": format!("udf_fields.{f}"), "condition": "is", "value": token})
            }
            None => {
                json!({"field": "description", "condition": "contains", "value": Self::marker(token)})
            }
        };
        let mut found = Vec::new();
        let mut start = 1u64;
        for _ in 0..MAX_PAGES {
            let input = json!({"list_info": {
                "row_count": 100,
                "start_index": start,
                "sort_field": "created_time",
                "sort_order": "desc",
                "get_total_count": true,
                "search_criteria": [criterion],
                "fields_required": ["id", "display_id", "subject", "status", "created_time", "udf_fields", "description"],
            }});
            let input = input.to_string();
            let resp = super::send_retrying(SYSTEM, &self.retry, || {
                self.request(reqwest::Method::GET, self.requests.clone())
                    .query(&[("input_data", input.as_str())])
            })
            .await?;
            let body = answer(resp, Op::Other).await?;
            let rows = body
                .get("requests")
                .and_then(Value::as_array)
                .ok_or_else(|| protocol("a list answer without requests"))?;
            for r in rows {
                let matches = match udf {
                    Some(f) => {
                        r.pointer(&format!("/udf_fields/{f}"))
                            .and_then(Value::as_str)
                            == Some(token)
                    }
                    None => r
                        .get("description")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.contains(&Self::marker(token))),
                };
                if matches {
                    found.push(self.ticket_ref(r)?);
                }
            }
            let more = body
                .pointer("/list_info/has_more_rows")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !more || rows.is_empty() {
                return Ok(found);
            }
            start += rows.len() as u64;
        }
        tracing::warn!(
            system = SYSTEM,
            "more than {} requests carry one key; reading the newest only",
            MAX_PAGES * 100
        );
        Ok(found)
    }

    pub async fn create(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        check_token(SYSTEM, t.key)?;
        let priority = self.priority_name(t.priority);
        let mut description = html(t.body);
        let mut request = json!({
            "subject": t.subject,
            "priority": {"name": priority},
        });
        if self.cfg.udf_field.is_empty() {
            description.push_str("<br>");
            description.push_str(&Self::marker(t.key));
        } else {
            request["udf_fields"] = json!({ self.cfg.udf_field.as_str(): t.key });
        }
        request["description"] = description.into();
        if let Some(r) = &self.cfg.requester {
            request["requester"] = json!({ "name": r });
        }
        if let Some(g) = &self.cfg.group {
            request["group"] = json!({ "name": g });
        }
        let req = self.write(
            reqwest::Method::POST,
            self.requests.clone(),
            &json!({ "request": request }),
        );
        let resp = super::send_once(SYSTEM, &self.retry, req).await?;
        let body = answer(resp, Op::Other).await?;
        let r = body
            .get("request")
            .filter(|r| r.is_object())
            .ok_or_else(|| protocol("a create answer without the request"))?;
        let mut r = r.clone();
        if r.get("created_time").is_none() {
            let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
            r["created_time"] = json!({ "value": now.to_string() });
        }
        let tr = self.ticket_ref(&r)?;
        self.check_priority(&tr.display_no, priority, &r);
        Ok(tr)
    }

    pub async fn add_note(&self, id: &str, text: &str) -> Result<(), TicketError> {
        let url = self.url(id, &["notes"])?;
        let input = json!({"note": {
            "description": html(text),
            "show_to_requester": false,
            "notify_technician": true,
            "mark_first_response": false,
            "add_to_linked_requests": false,
        }});
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.write(reqwest::Method::POST, url.clone(), &input)
        })
        .await?;
        answer(resp, Op::Other).await?;
        Ok(())
    }

    pub async fn reopen(&self, id: &str, note: &str) -> Result<(), TicketError> {
        let note = format!("Reopened by certkeeper: {note}");
        let current = self.read(id).await?;
        if self.norm(&current) != NormStatus::Active {
            let r = self
                .put(
                    id,
                    &json!({"request": {"status": {"name": self.cfg.reopen_status}}}),
                    Op::Reopen,
                )
                .await?;
            if self.norm(&r) != NormStatus::Active {
                return Err(TicketError::NotAllowed {
                    system: SYSTEM,
                    message: format!(
                        "the request stayed {:?}",
                        status_name(&r).unwrap_or_default()
                    ),
                });
            }
        }
        self.add_note(id, &note).await
    }

    pub async fn set_priority(&self, id: &str, p: Priority) -> Result<(), TicketError> {
        let name = self.priority_name(p);
        let r = self
            .put(
                id,
                &json!({"request": {"priority": {"name": name}}}),
                Op::Other,
            )
            .await?;
        let no = display_no(&r).unwrap_or_else(|| id.to_string());
        self.check_priority(&no, name, &r);
        Ok(())
    }

    pub async fn resolve(&self, id: &str, note: &str) -> Result<(), TicketError> {
        let r = self
            .put(
                id,
                &json!({"request": {
                    "status": {"name": self.cfg.resolve_status},
                    "resolution": {"content": html(note)},
                }}),
                Op::Other,
            )
            .await?;
        if self.norm(&r) == NormStatus::Active {
            return Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!(
                    "the request stayed {:?}",
                    status_name(&r).unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    pub async fn test_connection(&self) -> Result<(), TicketError> {
        let input =
            json!({"list_info": {"row_count": 1, "start_index": 1, "fields_required": ["id"]}})
                .to_string();
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::GET, self.requests.clone())
                .query(&[("input_data", input.as_str())])
        })
        .await?;
        let body = answer(resp, Op::Other).await?;
        if body.get("requests").and_then(Value::as_array).is_none() {
            return Err(protocol("no requests list: is this the API v3 URL?"));
        }
        Ok(())
    }

    fn priority_name(&self, p: Priority) -> &str {
        match p {
            Priority::High => &self.cfg.priority_high,
            Priority::Highest => &self.cfg.priority_highest,
        }
    }

    fn check_priority(&self, display_no: &str, wanted: &str, r: &Value) {
        let got = r.pointer("/priority/name").and_then(Value::as_str);
        if !got.is_some_and(|g| g.eq_ignore_ascii_case(wanted)) {
            tracing::warn!(
                system = SYSTEM,
                request = display_no,
                wanted,
                got = got.unwrap_or("(none)"),
                "the priority was changed by a matrix or rule of the instance"
            );
        }
    }

    async fn read(&self, id: &str) -> Result<Value, TicketError> {
        let url = self.url(id, &[])?;
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.request(reqwest::Method::GET, url.clone())
        })
        .await?;
        let body = answer(resp, Op::Other).await?;
        body.get("request")
            .filter(|r| r.is_object())
            .cloned()
            .ok_or_else(|| protocol("an answer without the request"))
    }

    async fn put(&self, id: &str, input: &Value, op: Op) -> Result<Value, TicketError> {
        let url = self.url(id, &[])?;
        let resp = super::send_retrying(SYSTEM, &self.retry, || {
            self.write(reqwest::Method::PUT, url.clone(), input)
        })
        .await?;
        let body = answer(resp, op).await?;
        body.get("request")
            .filter(|r| r.is_object())
            .cloned()
            .ok_or_else(|| protocol("an update answer without the request"))
    }

    /// The contract's classification: `in_progress` first, then the names.
    fn norm(&self, r: &Value) -> NormStatus {
        let name = status_name(r).unwrap_or_default();
        let in_progress = r.pointer("/status/in_progress").and_then(Value::as_bool);
        norm_status(&self.cfg, &name, in_progress)
    }

    fn ticket_ref(&self, r: &Value) -> Result<TicketRef, TicketError> {
        let id = scalar(r.get("id")).ok_or_else(|| protocol("a request without id"))?;
        let created = r
            .get("created_time")
            .and_then(|t| scalar(t.get("value")).or_else(|| scalar(Some(t))))
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|ms| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .ok_or_else(|| protocol(format!("request {id}: no usable created_time")))?;
        Ok(TicketRef {
            display_no: display_no(r).unwrap_or_else(|| id.clone()),
            id,
            status: self.norm(r),
            raw_status: status_name(r).unwrap_or_default(),
            created,
        })
    }
}

/// The normalised status of a status name and its `in_progress` flag.
pub fn norm_status(cfg: &SdpConfig, name: &str, in_progress: Option<bool>) -> NormStatus {
    let is = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case(name.trim()));
    if in_progress == Some(true) {
        NormStatus::Active
    } else if is(&cfg.resolved_statuses) {
        NormStatus::Resolved
    } else if is(&cfg.closed_statuses) {
        NormStatus::Closed
    } else if is(&cfg.canceled_statuses) {
        NormStatus::Canceled
    } else if in_progress == Some(false) {
        // A completed status of another name: terminal.
        NormStatus::Closed
    } else {
        NormStatus::Active
    }
}

fn status_name(r: &Value) -> Option<String> {
    match r.get("status")? {
        Value::String(s) => Some(s.clone()),
        s => s.get("name").and_then(Value::as_str).map(str::to_string),
    }
}

fn display_no(r: &Value) -> Option<String> {
    r.get("display_id").and_then(|d| {
        scalar(Some(d))
            .or_else(|| scalar(d.get("display_value")).or_else(|| scalar(d.get("value"))))
    })
}

/// A string or a number as a string (ids are digit strings, some builds send numbers).
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Plain text as the HTML the description and notes hold.
fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("<br>"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `input_data=<json>` as an `application/x-www-form-urlencoded` body.
fn form_body(input: &Value) -> String {
    let mut u = Url::parse("http://form.invalid/").unwrap_or_else(|_| unreachable!());
    u.query_pairs_mut()
        .append_pair("input_data", &input.to_string());
    u.query().unwrap_or_default().to_string()
}

fn protocol(message: impl Into<String>) -> TicketError {
    TicketError::Protocol {
        system: SYSTEM,
        message: message.into(),
    }
}

/// The `response_status` entries of an answer, object or array.
fn statuses(body: &Value) -> Vec<&Value> {
    match body.get("response_status") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    }
}

fn code(v: &Value) -> Option<u64> {
    match v.get("status_code")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A success answer's JSON (HTTP 2xx and every `status_code` 2000), or the error it
/// stands for.
async fn answer(resp: reqwest::Response, op: Op) -> Result<Value, TicketError> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| super::parse_retry_after(v, OffsetDateTime::now_utc()));
    let text = resp.text().await.map_err(|e| TicketError::Unavailable {
        system: SYSTEM,
        message: super::describe_transport_error(&e),
        retry_after: None,
    })?;
    classify(status, retry_after, &text, op)
}

/// The mapping of [`answer`], on the status, `Retry-After` and body text.
fn classify(
    status: u16,
    retry_after: Option<std::time::Duration>,
    text: &str,
    op: Op,
) -> Result<Value, TicketError> {
    let body: Option<Value> = serde_json::from_str(text).ok();
    let Some(body) = body else {
        return Err(match status {
            401 => TicketError::Auth {
                system: SYSTEM,
                message: "HTTP 401".into(),
            },
            500..=599 => TicketError::Unavailable {
                system: SYSTEM,
                message: format!("HTTP {status}"),
                retry_after: None,
            },
            _ => protocol(format!("HTTP {status} with a body that is not JSON")),
        });
    };
    let sts = statuses(&body);
    if sts.is_empty() && (200..300).contains(&status) {
        return Err(protocol(format!("HTTP {status} without a response_status")));
    }
    let ok = (200..300).contains(&status)
        && !sts.is_empty()
        && sts.iter().all(|s| code(s) == Some(2000));
    if ok {
        return Ok(body);
    }
    // The inner messages: (code, field, message).
    let mut inner: Vec<(Option<u64>, Option<String>, String)> = Vec::new();
    for s in &sts {
        if let Some(ms) = s.get("messages").and_then(Value::as_array) {
            for m in ms {
                inner.push((
                    code(m),
                    m.get("field").and_then(Value::as_str).map(str::to_string),
                    m.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ));
            }
        }
    }
    let outer = sts.iter().find_map(|s| code(s));
    let codes: Vec<u64> = inner.iter().filter_map(|m| m.0).chain(outer).collect();
    let has = |c: u64| codes.contains(&c);
    let mut message = inner
        .iter()
        .map(|(c, f, m)| {
            let mut s = String::new();
            if let Some(c) = c {
                s.push_str(&format!("{c}"));
            }
            if let Some(f) = f {
                s.push_str(&format!(" field {f}"));
            }
            if !m.is_empty() {
                s.push_str(&format!(": {m}"));
            }
            s.trim().to_string()
        })
        .collect::<Vec<_>>()
        .join("; ");
    if has(4012)
        && let Some(f) = inner
            .iter()
            .find(|m| m.0 == Some(4012))
            .and_then(|m| m.1.clone())
    {
        message = format!("the mandatory field {f} is missing ({message})");
    }
    if message.is_empty() {
        message = format!(
            "HTTP {status}, status_code {}",
            outer
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into())
        );
    }
    let message = truncate(&message, 400);
    Err(if status == 401 || has(4022) {
        TicketError::Auth {
            system: SYSTEM,
            message,
        }
    } else if status == 429 || has(4015) {
        TicketError::Unavailable {
            system: SYSTEM,
            message,
            retry_after,
        }
    } else if op == Op::Reopen && (has(4002) || has(4009)) {
        TicketError::NotAllowed {
            system: SYSTEM,
            message,
        }
    } else if status >= 500 || has(4004) {
        TicketError::Unavailable {
            system: SYSTEM,
            message,
            retry_after: None,
        }
    } else {
        TicketError::Rejected {
            system: SYSTEM,
            status,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_normalise_by_in_progress_then_names() {
        let c = SdpConfig::new("http://x", "k");
        assert_eq!(norm_status(&c, "Open", Some(true)), NormStatus::Active);
        assert_eq!(norm_status(&c, "On Hold", Some(true)), NormStatus::Active);
        assert_eq!(
            norm_status(&c, "resolved", Some(false)),
            NormStatus::Resolved
        );
        assert_eq!(norm_status(&c, "Closed", Some(false)), NormStatus::Closed);
        assert_eq!(
            norm_status(&c, "Cancelled", Some(false)),
            NormStatus::Canceled
        );
        assert_eq!(norm_status(&c, "Canceled", None), NormStatus::Canceled);
        assert_eq!(norm_status(&c, "Archived", Some(false)), NormStatus::Closed);
        assert_eq!(norm_status(&c, "Custom", None), NormStatus::Active);
    }

    #[test]
    fn config_is_strict_and_debug_redacts() {
        let c: SdpConfig = serde_json::from_value(json!({
            "url": "http://sdp:8080", "technician_key": "ABCD-SECRET-KEY"
        }))
        .unwrap();
        assert_eq!(c.udf_field, "udf_sline_1201");
        assert_eq!(c.priority_highest, "High");
        let d = format!("{c:?}");
        assert!(!d.contains("SECRET"), "{d}");
        assert!(
            serde_json::from_value::<SdpConfig>(
                json!({"url": "http://x", "technician_key": "k", "udf": "x"})
            )
            .is_err()
        );
        let mut bad = SdpConfig::new("http://x", "k");
        bad.udf_field = "udf_fields.x\"".into();
        assert!(Sdp::new(bad, RetryPolicy::default()).is_err());
    }

    #[test]
    fn envelopes_map_to_errors() {
        let ok_list =
            r#"{"requests":[],"response_status":[{"status_code":2000,"status":"success"}]}"#;
        assert!(classify(200, None, ok_list, Op::Other).is_ok());
        let ok_one = r#"{"request":{},"response_status":{"status_code":2000,"status":"success"}}"#;
        assert!(classify(201, None, ok_one, Op::Other).is_ok());
        // HTTP 200 is not enough: the status code must be 2000.
        let failed_in_200 = r#"{"response_status":[{"status_code":4000,"status":"failed","messages":[{"status_code":4001,"field":"status","message":"no such status"}]}]}"#;
        match classify(200, None, failed_in_200, Op::Other) {
            Err(TicketError::Rejected { message, .. }) => {
                assert!(message.contains("4001 field status"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let err = |code: u32, field: &str| {
            format!(
                r#"{{"response_status":{{"status_code":4000,"status":"failed","messages":[{{"status_code":{code},"field":"{field}","type":"failed","message":"m"}}]}}}}"#
            )
        };
        assert!(matches!(
            classify(401, None, &err(4022, "x"), Op::Other),
            Err(TicketError::Auth { .. })
        ));
        let e = classify(
            429,
            Some(std::time::Duration::from_secs(3)),
            &err(4015, "x"),
            Op::Other,
        )
        .unwrap_err();
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
        assert!(matches!(
            classify(403, None, &err(4002, "status"), Op::Reopen),
            Err(TicketError::NotAllowed { .. })
        ));
        assert!(matches!(
            classify(400, None, &err(4009, "status"), Op::Reopen),
            Err(TicketError::NotAllowed { .. })
        ));
        assert!(matches!(
            classify(403, None, &err(4002, "status"), Op::Other),
            Err(TicketError::Rejected { .. })
        ));
        assert!(matches!(
            classify(500, None, &err(4004, "x"), Op::Other),
            Err(TicketError::Unavailable { .. })
        ));
        match classify(400, None, &err(4012, "group"), Op::Other) {
            Err(TicketError::Rejected { message, .. }) => {
                assert!(
                    message.starts_with("the mandatory field group is missing"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(200, None, "<html>", Op::Other),
            Err(TicketError::Protocol { .. })
        ));
        assert!(matches!(
            classify(200, None, "{}", Op::Other),
            Err(TicketError::Protocol { .. })
        ));
    }

    #[test]
    fn bodies_are_form_encoded_html() {
        assert_eq!(html("a<b>\n&c"), "a&lt;b&gt;<br>&amp;c");
        let b = form_body(&json!({"x": "a b&c"}));
        assert!(b.starts_with("input_data=%7B%22x%22"), "{b}");
        assert!(!b.contains('&'), "{b}");
    }
}
