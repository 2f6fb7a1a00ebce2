//! In-process HTTP receivers for the push channels (contract section 5), each an
//! axum server on a free loopback port, stopped on drop:
//!
//! - [`WebhookReceiver`]: records every request (any path) with its headers and raw
//!   body, and answers what it is told (200 by default; a redirect, a 429 with
//!   `Retry-After`, a 500 …);
//! - [`SlackReceiver`]: a Slack-compatible incoming webhook: `200 ok`, the plain-string
//!   errors (`invalid_payload`, `no_text`, `action_prohibited`, `channel_not_found`,
//!   `no_service`, `channel_is_archived`), `429 rate_limited` above a budget;
//! - [`PagerDutyReceiver`]: Events API v2 `/v2/enqueue`: validation with `errors[]`,
//!   a per-routing-key rate limit, and alerts kept by `dedup_key` (a trigger merges
//!   into the open alert, a resolve closes it, an unknown acknowledge or resolve is
//!   dropped).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

fn record(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Recorded {
    Recorded {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    }
}

/// An answer to give.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
    /// `302 Found` to `location`.
    pub fn redirect(location: &str) -> Self {
        Reply::status(302).header("location", location)
    }
    /// `429 Too Many Requests` with `Retry-After: secs`.
    pub fn too_many(secs: u64) -> Self {
        Reply::status(429).header("retry-after", &secs.to_string())
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_string();
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(k, v);
            }
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, headers, self.body).into_response()
    }
}

/// An axum server on 127.0.0.1, stopped on drop.
struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    async fn start(router: axum::Router) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Running {
            addr,
            stop: Some(tx),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------
// Generic webhook

#[derive(Default)]
struct WebhookState {
    requests: Vec<Recorded>,
    /// Answers to give next, in order; then `default`.
    queue: VecDeque<Reply>,
    default: Option<Reply>,
}

/// Records every request; answers 200 unless told otherwise.
pub struct WebhookReceiver {
    running: Running,
    state: Arc<Mutex<WebhookState>>,
}

impl WebhookReceiver {
    pub async fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(WebhookState::default()));
        let router = axum::Router::new()
            .fallback(webhook_any)
            .with_state(state.clone());
        Ok(WebhookReceiver {
            running: Running::start(router).await?,
            state,
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    /// Answer every request from now on with `reply`.
    pub fn respond(&self, reply: Reply) {
        let mut s = self.state.lock().expect("webhook state");
        s.queue.clear();
        s.default = Some(reply);
    }

    /// Answer the next request with `reply`, then go back to the default.
    pub fn respond_once(&self, reply: Reply) {
        self.state
            .lock()
            .expect("webhook state")
            .queue
            .push_back(reply);
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("webhook state").requests.clone()
    }
}

async fn webhook_any(
    State(state): State<Arc<Mutex<WebhookState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let mut s = state.lock().expect("webhook state");
    s.requests.push(record(&method, &uri, &headers, &body));
    match s.queue.pop_front() {
        Some(r) => r,
        None => s.default.clone().unwrap_or_else(|| Reply::status(200)),
    }
}

// ---------------------------------------------------------------------------------
// Slack

/// What state the Slack side is in (an error it answers with to every post).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlackState {
    #[default]
    Ok,
    /// 403 `action_prohibited`.
    Prohibited,
    /// 404 `channel_not_found`.
    ChannelNotFound,
    /// 404 `no_service` (the URL was revoked).
    Revoked,
    /// 410 `channel_is_archived`.
    Archived,
    /// 500.
    ServerError,
}

struct SlackInner {
    token_path: String,
    state: SlackState,
    /// At most this many posts in any one second, then 429 `rate_limited`.
    per_second: usize,
    recent: VecDeque<Instant>,
    accepted: Vec<serde_json::Value>,
    requests: Vec<Recorded>,
}

/// A Slack-compatible incoming webhook at a secret path.
pub struct SlackReceiver {
    running: Running,
    inner: Arc<Mutex<SlackInner>>,
}

impl SlackReceiver {
    /// With a budget of `per_second` posts per second (Slack's is about 1).
    pub async fn start(per_second: usize) -> Result<Self> {
        let inner = Arc::new(Mutex::new(SlackInner {
            token_path: "/services/T0CERTKEEP/B0HOOK0001/s3cr3tW3bh00kT0k3nXYZ".into(),
            state: SlackState::Ok,
            per_second,
            recent: VecDeque::new(),
            accepted: Vec::new(),
            requests: Vec::new(),
        }));
        let router = axum::Router::new()
            .fallback(slack_any)
            .with_state(inner.clone());
        Ok(SlackReceiver {
            running: Running::start(router).await?,
            inner,
        })
    }

    /// The webhook URL (a secret, like Slack's).
    pub fn url(&self) -> String {
        let path = self.inner.lock().expect("slack").token_path.clone();
        format!("http://{}{path}", self.running.addr)
    }

    /// A URL on the same server that was never issued (answers `no_service`).
    pub fn revoked_url(&self) -> String {
        format!(
            "http://{}/services/T0CERTKEEP/B0GONE/none",
            self.running.addr
        )
    }

    pub fn set_state(&self, state: SlackState) {
        self.inner.lock().expect("slack").state = state;
    }

    /// The payloads accepted with `200 ok`.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.inner.lock().expect("slack").accepted.clone()
    }

    /// Every request, answered or not.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("slack").requests.clone()
    }
}

fn plain(status: u16, body: &str) -> Reply {
    Reply::status(status)
        .header("content-type", "text/html")
        .body(body)
}

async fn slack_any(
    State(inner): State<Arc<Mutex<SlackInner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let mut s = inner.lock().expect("slack");
    s.requests.push(record(&method, &uri, &headers, &body));
    if method != Method::POST || uri.path() != s.token_path {
        return plain(404, "no_service");
    }
    match s.state {
        SlackState::Ok => {}
        SlackState::Prohibited => return plain(403, "action_prohibited"),
        SlackState::ChannelNotFound => return plain(404, "channel_not_found"),
        SlackState::Revoked => return plain(404, "no_service"),
        SlackState::Archived => return plain(410, "channel_is_archived"),
        SlackState::ServerError => return plain(500, "internal_error"),
    }
    let now = Instant::now();
    while s
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        s.recent.pop_front();
    }
    if s.recent.len() >= s.per_second {
        return plain(429, "rate_limited").header("retry-after", "1");
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return plain(400, "invalid_payload");
    };
    let Some(obj) = v.as_object() else {
        return plain(400, "invalid_payload");
    };
    let text_ok = obj
        .get("text")
        .and_then(|t| t.as_str())
        .is_some_and(|t| !t.trim().is_empty());
    let blocks = obj.get("blocks");
    if blocks.is_some_and(|b| !b.is_array()) {
        return plain(400, "invalid_payload");
    }
    let has_blocks = blocks.is_some_and(|b| b.as_array().is_some_and(|a| !a.is_empty()));
    if !text_ok && !has_blocks {
        return plain(400, "no_text");
    }
    s.recent.push_back(now);
    s.accepted.push(v);
    plain(200, "ok")
}

// ---------------------------------------------------------------------------------
// PagerDuty Events API v2

/// An alert as the PagerDuty side keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub routing_key: String,
    pub dedup_key: String,
    pub summary: String,
    pub severity: String,
    /// `triggered`, `acknowledged` or `resolved`.
    pub status: String,
    /// Trigger events merged into it (the first included).
    pub triggers: usize,
}

struct PdInner {
    per_minute: usize,
    recent: std::collections::HashMap<String, VecDeque<Instant>>,
    alerts: Vec<Alert>,
    events: Vec<serde_json::Value>,
    dropped: usize,
    next_key: u64,
}

/// A PagerDuty Events API v2 endpoint (`POST /v2/enqueue`).
pub struct PagerDutyReceiver {
    running: Running,
    inner: Arc<Mutex<PdInner>>,
}

impl PagerDutyReceiver {
    /// With at most `per_minute` events per minute per routing key (PagerDuty's is
    /// about 120).
    pub async fn start(per_minute: usize) -> Result<Self> {
        let inner = Arc::new(Mutex::new(PdInner {
            per_minute,
            recent: Default::default(),
            alerts: Vec::new(),
            events: Vec::new(),
            dropped: 0,
            next_key: 0,
        }));
        let router = axum::Router::new()
            .route("/v2/enqueue", axum::routing::post(pd_enqueue))
            .with_state(inner.clone());
        Ok(PagerDutyReceiver {
            running: Running::start(router).await?,
            inner,
        })
    }

    /// `http://127.0.0.1:<port>/v2/enqueue`.
    pub fn url(&self) -> String {
        format!("http://{}/v2/enqueue", self.running.addr)
    }

    /// Every alert ever opened, oldest first.
    pub fn alerts(&self) -> Vec<Alert> {
        self.inner.lock().expect("pd").alerts.clone()
    }

    /// The alerts not resolved.
    pub fn open_alerts(&self) -> Vec<Alert> {
        self.alerts()
            .into_iter()
            .filter(|a| a.status != "resolved")
            .collect()
    }

    /// The events accepted (202), as sent.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.inner.lock().expect("pd").events.clone()
    }

    /// Acknowledge or resolve events for an unknown key, dropped.
    pub fn dropped(&self) -> usize {
        self.inner.lock().expect("pd").dropped
    }
}

fn pd_invalid(errors: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": errors,
        })),
    )
        .into_response()
}

fn pd_validate(v: &serde_json::Value) -> Result<(String, String, Option<String>), Vec<String>> {
    let mut errors = Vec::new();
    let Some(obj) = v.as_object() else {
        return Err(vec!["Event object is not a JSON object".into()]);
    };
    let routing_key = match obj.get("routing_key").and_then(|k| k.as_str()) {
        Some(k) if k.len() == 32 => k.to_string(),
        Some(_) => {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".into());
            String::new()
        }
        None => {
            errors.push("'routing_key' is missing or blank".into());
            String::new()
        }
    };
    let action = obj
        .get("event_action")
        .and_then(|a| a.as_str())
        .unwrap_or("");
    if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        errors.push("'event_action' is invalid (must be trigger, acknowledge or resolve)".into());
    }
    let dedup_key = match obj.get("dedup_key") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) if k.len() <= 255 && !k.is_empty() => Some(k.clone()),
        Some(serde_json::Value::String(_)) => {
            errors.push("'dedup_key' must be 1 to 255 characters".into());
            None
        }
        Some(_) => {
            errors.push("'dedup_key' must be a string".into());
            None
        }
    };
    if action != "trigger" && dedup_key.is_none() {
        errors.push("'dedup_key' is required for acknowledge and resolve".into());
    }
    if action == "trigger" {
        match obj.get("payload").and_then(|p| p.as_object()) {
            None => errors.push("'payload' is missing".into()),
            Some(p) => {
                for f in ["summary", "source", "severity"] {
                    let given = p
                        .get(f)
                        .and_then(|x| x.as_str())
                        .is_some_and(|x| !x.is_empty());
                    if !given {
                        errors.push(format!("'payload.{f}' is missing or blank"));
                    }
                }
                if let Some(s) = p.get("summary").and_then(|x| x.as_str())
                    && s.chars().count() > 1024
                {
                    errors.push("'payload.summary' is longer than 1024 characters".into());
                }
                if let Some(s) = p.get("severity").and_then(|x| x.as_str())
                    && !matches!(s, "critical" | "error" | "warning" | "info")
                {
                    errors.push(
                        "'payload.severity' is invalid (must be critical, error, warning or info)"
                            .into(),
                    );
                }
                if let Some(t) = p.get("timestamp") {
                    let ok = t.as_str().is_some_and(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_ok()
                    });
                    if !ok {
                        errors.push("'payload.timestamp' is not an ISO 8601 timestamp".into());
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok((routing_key, action.to_string(), dedup_key))
    } else {
        Err(errors)
    }
}

async fn pd_enqueue(State(inner): State<Arc<Mutex<PdInner>>>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return pd_invalid(vec!["Event object is not valid JSON".into()]);
    };
    let (routing_key, action, dedup_key) = match pd_validate(&v) {
        Ok(x) => x,
        Err(errors) => return pd_invalid(errors),
    };
    let mut s = inner.lock().expect("pd");
    let now = Instant::now();
    let per_minute = s.per_minute;
    let recent = s.recent.entry(routing_key.clone()).or_default();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        recent.pop_front();
    }
    if recent.len() >= per_minute {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "status": "throttle event",
                "message": "Requests for this service are arriving too quickly. Please retry later."
            })),
        )
            .into_response();
    }
    recent.push_back(now);
    let dedup_key = match dedup_key {
        Some(k) => k,
        None => {
            s.next_key += 1;
            format!("pd-generated-{:016x}", s.next_key)
        }
    };
    let open = s.alerts.iter().position(|a| {
        a.routing_key == routing_key && a.dedup_key == dedup_key && a.status != "resolved"
    });
    match (action.as_str(), open) {
        ("trigger", Some(i)) => {
            s.alerts[i].triggers += 1;
        }
        ("trigger", None) => {
            let p = &v["payload"];
            s.alerts.push(Alert {
                routing_key,
                dedup_key: dedup_key.clone(),
                summary: p["summary"].as_str().unwrap_or_default().to_string(),
                severity: p["severity"].as_str().unwrap_or_default().to_string(),
                status: "triggered".into(),
                triggers: 1,
            });
        }
        ("acknowledge", Some(i)) => s.alerts[i].status = "acknowledged".into(),
        ("resolve", Some(i)) => s.alerts[i].status = "resolved".into(),
        _ => s.dropped += 1,
    }
    s.events.push(v);
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "status": "success",
            "message": "Event processed",
            "dedup_key": dedup_key,
        })),
    )
        .into_response()
}
