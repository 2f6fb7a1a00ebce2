//! The Jira connector (Cloud and Data Center), per `shared/contracts/ticketing.md` §0
//! and §3.
//!
//! - Cloud: `/rest/api/3`, rich text as ADF, search `GET /search/jql` with
//!   `nextPageToken`/`isLast`. Search is eventually consistent, so keys created here are
//!   remembered for a while and read back by key (`GET /issue/{key}` is consistent)
//!   when a search misses them.
//! - Data Center: `/rest/api/2`, plain-text bodies, search `GET /search` with
//!   `startAt`/`total`.
//! - Auth: Basic `email:api_token`, or `Authorization: Bearer <PAT>`.
//! - The dedupe token is a label (`labels = "cm1-…"` matches exactly), next to the
//!   label `certkeeper`; every hit is post-filtered on its labels.
//! - Status from `statusCategory.key`: new and indeterminate → Active; done → Canceled
//!   when the resolution is one of `canceled_resolutions` ("Won't Do", …), else
//!   Resolved.
//! - Reopen: a transition whose target category is not done, preferring
//!   `reopen_transitions` by name; none → `NotAllowed`. Resolve: a transition into
//!   done, preferring `resolve_transitions`, walking through an in-progress step when
//!   the workflow has no direct one.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::rt::{base_url, check_token, http_client, short};
use super::{
    NewTicket, NormStatus, Priority, RetryPolicy, TicketError, TicketRef, send_once, send_retrying,
};

const SYSTEM: &str = "jira";
/// The fields a search asks for.
const FIELDS: &str = "status,created,summary,labels,resolution";
/// How long a key created here is read back by key when a Cloud search misses it.
const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Cloud or Data Center (Server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JiraFlavour {
    #[default]
    Cloud,
    #[serde(alias = "dc", alias = "server")]
    Datacenter,
}

/// Settings of the Jira connector.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JiraConfig {
    /// The site: `https://<site>.atlassian.net` or `https://jira.example.com`.
    pub url: String,
    #[serde(default)]
    pub flavour: JiraFlavour,
    /// Basic auth: the account's e-mail, with `api_token`.
    #[serde(default)]
    pub email: Option<String>,
    /// Basic auth: an Atlassian API token (Cloud) or the password (DC).
    #[serde(default)]
    pub api_token: Option<String>,
    /// Bearer auth: a personal access token (Data Center 8.14 and later).
    #[serde(default)]
    pub pat: Option<String>,
    /// The project key (`OPS`).
    pub project: String,
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// The priority name of a new ticket.
    #[serde(default = "default_high")]
    pub priority_high: String,
    /// The priority name of an escalated ticket.
    #[serde(default = "default_highest")]
    pub priority_highest: String,
    /// Transition names preferred for a reopen, in order.
    #[serde(default = "default_reopen")]
    pub reopen_transitions: Vec<String>,
    /// Transition names preferred for a resolve, in order.
    #[serde(default = "default_resolve")]
    pub resolve_transitions: Vec<String>,
    /// The resolution set when a resolve transition offers the field.
    #[serde(default = "default_resolution")]
    pub resolution: String,
    /// Resolutions of a done issue that mean Canceled rather than Resolved.
    #[serde(default = "default_canceled")]
    pub canceled_resolutions: Vec<String>,
    /// Jira Service Management: mark comments internal (`sd.public.comment`).
    #[serde(default)]
    pub internal_comments: bool,
}

fn default_issue_type() -> String {
    "Task".into()
}
fn default_high() -> String {
    "High".into()
}
fn default_highest() -> String {
    "Highest".into()
}
fn default_reopen() -> Vec<String> {
    vec!["Reopen".into(), "Back to To Do".into()]
}
fn default_resolve() -> Vec<String> {
    vec!["Done".into(), "Resolve".into()]
}
fn default_resolution() -> String {
    "Done".into()
}
fn default_canceled() -> Vec<String> {
    ["Won't Do", "Won't Fix", "Cancelled", "Canceled", "Declined"]
        .map(String::from)
        .to_vec()
}

impl fmt::Debug for JiraConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("JiraConfig")
            .field("url", &self.url)
            .field("flavour", &self.flavour)
            .field("email", &self.email)
            .field("api_token", &hide(&self.api_token))
            .field("pat", &hide(&self.pat))
            .field("project", &self.project)
            .field("issue_type", &self.issue_type)
            .field("priority_high", &self.priority_high)
            .field("priority_highest", &self.priority_highest)
            .field("reopen_transitions", &self.reopen_transitions)
            .field("resolve_transitions", &self.resolve_transitions)
            .field("resolution", &self.resolution)
            .field("canceled_resolutions", &self.canceled_resolutions)
            .field("internal_comments", &self.internal_comments)
            .finish()
    }
}

/// A key created here, for Cloud's eventually consistent search.
#[derive(Debug, Clone)]
struct Recent {
    token: String,
    key: String,
    at: Instant,
}

/// The Jira connector (cheap to clone: clones share the client and the memory of fresh keys).
#[derive(Clone)]
pub struct Jira {
    inner: Arc<JiraInner>,
}

struct JiraInner {
    /// `<url>/rest/api/3` or `/2`.
    api: String,
    flavour: JiraFlavour,
    auth: HeaderValue,
    cfg: JiraConfig,
    client: reqwest::Client,
    retry: RetryPolicy,
    recent: Arc<Mutex<Vec<Recent>>>,
}

impl fmt::Debug for Jira {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jira")
            .field("api", &self.inner.api)
            .field("auth", &"***")
            .field("cfg", &self.inner.cfg)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// One transition offered by `GET /issue/{key}/transitions`.
struct Move {
    id: String,
    name: String,
    to_category: String,
    offers_resolution: bool,
}

impl Jira {
    pub fn new(cfg: JiraConfig, retry: RetryPolicy) -> Result<Self, TicketError> {
        let config = |message: String| TicketError::Config {
            system: SYSTEM,
            message,
        };
        let site = base_url(SYSTEM, &cfg.url)?;
        let api = match cfg.flavour {
            JiraFlavour::Cloud => format!("{site}/rest/api/3"),
            JiraFlavour::Datacenter => format!("{site}/rest/api/2"),
        };
        let nonempty = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.trim().is_empty());
        let header = match (
            nonempty(&cfg.email),
            nonempty(&cfg.api_token),
            nonempty(&cfg.pat),
        ) {
            (true, true, false) => {
                let pair = format!(
                    "{}:{}",
                    cfg.email.as_deref().unwrap_or_default().trim(),
                    cfg.api_token.as_deref().unwrap_or_default().trim()
                );
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            (false, false, true) => {
                format!("Bearer {}", cfg.pat.as_deref().unwrap_or_default().trim())
            }
            _ => {
                return Err(config(
                    "set either email and api_token (Basic) or pat (Bearer)".into(),
                ));
            }
        };
        let mut auth = HeaderValue::from_str(&header)
            .map_err(|_| config("the credentials hold characters a header cannot carry".into()))?;
        auth.set_sensitive(true);
        let p = &cfg.project;
        if p.is_empty()
            || !p.starts_with(|c: char| c.is_ascii_uppercase())
            || !p
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(config(format!(
                "project {p:?} is not a project key (upper-case letters, digits, _)"
            )));
        }
        for (name, v) in [
            ("issue_type", &cfg.issue_type),
            ("priority_high", &cfg.priority_high),
            ("priority_highest", &cfg.priority_highest),
        ] {
            if v.trim().is_empty() {
                return Err(config(format!("{name} is empty")));
            }
        }
        Ok(Jira {
            inner: Arc::new(JiraInner {
                api,
                flavour: cfg.flavour,
                auth,
                client: http_client(SYSTEM, &retry)?,
                cfg,
                retry,
                recent: Arc::new(Mutex::new(Vec::new())),
            }),
        })
    }

    pub(super) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.inner
            .client
            .request(method, format!("{}{path}", self.inner.api))
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json")
    }

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

    /// Rich text as the API version wants it: ADF on v3, a string on v2.
    fn rich(&self, text: &str) -> Value {
        match self.inner.flavour {
            JiraFlavour::Datacenter => Value::String(text.into()),
            JiraFlavour::Cloud => adf(text),
        }
    }

    fn comment_json(&self, text: &str) -> Value {
        let mut c = json!({ "body": self.rich(text) });
        if self.inner.cfg.internal_comments {
            c["properties"] =
                json!([{ "key": "sd.public.comment", "value": { "internal": true } }]);
        }
        c
    }

    pub async fn find_by_key(&self, token: &str) -> Result<Vec<TicketRef>, TicketError> {
        check_token(SYSTEM, token)?;
        let jql = format!(
            "project = {} AND labels = \"{token}\" ORDER BY created DESC",
            self.inner.cfg.project
        );
        let mut issues: Vec<Value> = Vec::new();
        match self.inner.flavour {
            JiraFlavour::Cloud => {
                let mut next: Option<String> = None;
                for _ in 0..50 {
                    let mut q = vec![
                        ("jql", jql.as_str()),
                        ("fields", FIELDS),
                        ("maxResults", "100"),
                    ];
                    if let Some(t) = &next {
                        q.push(("nextPageToken", t.as_str()));
                    }
                    let v = self
                        .call(reqwest::Method::GET, "/search/jql", &q, None)
                        .await?;
                    issues.extend(page_issues(&v)?);
                    next = v
                        .get("nextPageToken")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let last = v.get("isLast").and_then(Value::as_bool).unwrap_or(true);
                    if last || next.is_none() {
                        break;
                    }
                }
            }
            JiraFlavour::Datacenter => {
                let mut start = 0usize;
                for _ in 0..50 {
                    let start_s = start.to_string();
                    let q = [
                        ("jql", jql.as_str()),
                        ("fields", FIELDS),
                        ("maxResults", "100"),
                        ("startAt", start_s.as_str()),
                    ];
                    let v = self.call(reqwest::Method::GET, "/search", &q, None).await?;
                    let page = page_issues(&v)?;
                    let n = page.len();
                    issues.extend(page);
                    let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
                    start += n;
                    if n == 0 || start as u64 >= total {
                        break;
                    }
                }
            }
        }
        let mut out = Vec::new();
        for i in &issues {
            if has_label(i, token) {
                let t = self.ticket_ref(i)?;
                if !out.iter().any(|o: &TicketRef| o.id == t.id) {
                    out.push(t);
                }
            }
        }
        // Keys created here that the (eventually consistent) search has not shown yet.
        for key in self.remembered(token) {
            if out.iter().any(|o| o.id == key) {
                continue;
            }
            match self
                .call(
                    reqwest::Method::GET,
                    &format!("/issue/{key}"),
                    &[("fields", FIELDS)],
                    None,
                )
                .await
            {
                Ok(i) if has_label(&i, token) => out.push(self.ticket_ref(&i)?),
                Ok(_) | Err(TicketError::Rejected { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.created));
        Ok(out)
    }

    fn remember(&self, token: &str, key: &str) {
        if self.inner.flavour != JiraFlavour::Cloud {
            return;
        }
        let mut r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|x| x.at.elapsed() < REMEMBER_FOR);
        r.push(Recent {
            token: token.into(),
            key: key.into(),
            at: Instant::now(),
        });
    }

    fn remembered(&self, token: &str) -> Vec<String> {
        let r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .filter(|x| x.token == token && x.at.elapsed() < REMEMBER_FOR)
            .map(|x| x.key.clone())
            .collect()
    }

    pub async fn create(&self, t: &NewTicket<'_>) -> Result<TicketRef, TicketError> {
        check_token(SYSTEM, t.key)?;
        let body = json!({ "fields": {
            "project": { "key": self.inner.cfg.project },
            "issuetype": { "name": self.inner.cfg.issue_type },
            "summary": t.subject,
            "description": self.rich(t.body),
            "priority": { "name": self.priority(t.priority) },
            "labels": ["certkeeper", t.key],
        }});
        // One attempt: a create is never retried blindly (Connector::create_deduped).
        let resp = send_once(
            SYSTEM,
            &self.inner.retry,
            self.req(reqwest::Method::POST, "/issue").json(&body),
        )
        .await?;
        let v = answer(resp).await?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| check_key(k).is_ok())
            .ok_or_else(|| protocol("a create answer without an issue key"))?
            .to_string();
        self.remember(t.key, &key);
        // The issue as Jira holds it; the create stands even if this read fails.
        match self
            .call(
                reqwest::Method::GET,
                &format!("/issue/{key}"),
                &[("fields", FIELDS)],
                None,
            )
            .await
            .and_then(|i| self.ticket_ref(&i))
        {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(system = SYSTEM, issue = %key, error = %e, "created, but reading it back failed");
                Ok(TicketRef {
                    id: key.clone(),
                    display_no: key,
                    status: NormStatus::Active,
                    raw_status: String::new(),
                    created: OffsetDateTime::now_utc(),
                })
            }
        }
    }

    pub async fn add_note(&self, id: &str, text: &str) -> Result<(), TicketError> {
        check_key(id)?;
        self.call(
            reqwest::Method::POST,
            &format!("/issue/{id}/comment"),
            &[],
            Some(&self.comment_json(text)),
        )
        .await?;
        Ok(())
    }

    /// A transition out of done with the note as its comment; an issue that is not
    /// done only gets the note (so a repeated reopen is harmless).
    pub async fn reopen(&self, id: &str, note: &str) -> Result<(), TicketError> {
        check_key(id)?;
        if self.category(id).await? != "done" {
            return self.add_note(id, note).await;
        }
        let moves = self.moves(id).await?;
        let Some(m) = pick(&moves, &self.inner.cfg.reopen_transitions, |m| {
            m.to_category != "done"
        }) else {
            return Err(TicketError::NotAllowed {
                system: SYSTEM,
                message: format!(
                    "{id}: the workflow offers no transition out of done (offered: {})",
                    names(&moves)
                ),
            });
        };
        self.transition(id, m, Some(note), None).await
    }

    pub async fn set_priority(&self, id: &str, p: Priority) -> Result<(), TicketError> {
        check_key(id)?;
        let body = json!({ "fields": { "priority": { "name": self.priority(p) } } });
        self.call(
            reqwest::Method::PUT,
            &format!("/issue/{id}"),
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// A transition into done with the note as its comment, through at most two
    /// in-progress steps when the workflow has no direct one.
    pub async fn resolve(&self, id: &str, note: &str) -> Result<(), TicketError> {
        check_key(id)?;
        if self.category(id).await? == "done" {
            return self.add_note(id, note).await;
        }
        for _ in 0..3 {
            let moves = self.moves(id).await?;
            if let Some(m) = pick(&moves, &self.inner.cfg.resolve_transitions, |m| {
                m.to_category == "done"
            }) {
                let resolution = m
                    .offers_resolution
                    .then_some(self.inner.cfg.resolution.as_str());
                return self.transition(id, m, Some(note), resolution).await;
            }
            let Some(step) = moves.iter().find(|m| m.to_category == "indeterminate") else {
                break;
            };
            self.transition(id, step, None, None).await?;
        }
        Err(TicketError::NotAllowed {
            system: SYSTEM,
            message: format!("{id}: the workflow offers no way into done"),
        })
    }

    /// An authenticated read (`GET /myself`, then the project) that creates nothing.
    pub async fn test_connection(&self) -> Result<(), TicketError> {
        self.call(reqwest::Method::GET, "/myself", &[], None)
            .await?;
        match self
            .call(
                reqwest::Method::GET,
                &format!("/project/{}", self.inner.cfg.project),
                &[],
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(TicketError::Rejected { status: 404, .. }) => Err(TicketError::Config {
                system: SYSTEM,
                message: format!(
                    "project {} does not exist or is not visible to this account",
                    self.inner.cfg.project
                ),
            }),
            Err(e) => Err(e),
        }
    }

    fn priority(&self, p: Priority) -> &str {
        match p {
            Priority::High => &self.inner.cfg.priority_high,
            Priority::Highest => &self.inner.cfg.priority_highest,
        }
    }

    async fn category(&self, id: &str) -> Result<String, TicketError> {
        let i = self
            .call(
                reqwest::Method::GET,
                &format!("/issue/{id}"),
                &[("fields", "status")],
                None,
            )
            .await?;
        i.pointer("/fields/status/statusCategory/key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| protocol("an issue without status.statusCategory.key"))
    }

    async fn moves(&self, id: &str) -> Result<Vec<Move>, TicketError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/issue/{id}/transitions"),
                &[("expand", "transitions.fields")],
                None,
            )
            .await?;
        let list = v
            .get("transitions")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("a transitions answer without transitions"))?;
        Ok(list
            .iter()
            .filter_map(|t| {
                Some(Move {
                    id: t.get("id").and_then(Value::as_str)?.to_string(),
                    name: t.get("name").and_then(Value::as_str)?.to_string(),
                    to_category: t
                        .pointer("/to/statusCategory/key")
                        .and_then(Value::as_str)?
                        .to_string(),
                    offers_resolution: t.pointer("/fields/resolution").is_some(),
                })
            })
            .collect())
    }

    async fn transition(
        &self,
        id: &str,
        m: &Move,
        note: Option<&str>,
        resolution: Option<&str>,
    ) -> Result<(), TicketError> {
        let mut body = json!({ "transition": { "id": m.id } });
        if let Some(note) = note {
            body["update"] = json!({ "comment": [{ "add": self.comment_json(note) }] });
        }
        if let Some(r) = resolution {
            body["fields"] = json!({ "resolution": { "name": r } });
        }
        self.call(
            reqwest::Method::POST,
            &format!("/issue/{id}/transitions"),
            &[],
            Some(&body),
        )
        .await?;
        Ok(())
    }

    fn ticket_ref(&self, i: &Value) -> Result<TicketRef, TicketError> {
        let key = i
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol("an issue without a key"))?
            .to_string();
        let f = i.get("fields").unwrap_or(&Value::Null);
        let raw_status = f
            .pointer("/status/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let category = f
            .pointer("/status/statusCategory/key")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol("an issue without status.statusCategory.key"))?;
        let resolution = f.pointer("/resolution/name").and_then(Value::as_str);
        let created = f
            .get("created")
            .and_then(Value::as_str)
            .and_then(parse_jira_time)
            .ok_or_else(|| protocol("an issue without a readable created time"))?;
        Ok(TicketRef {
            id: key.clone(),
            display_no: key,
            status: norm_status(category, resolution, &self.inner.cfg.canceled_resolutions),
            raw_status,
            created,
        })
    }
}

/// `statusCategory.key` and the resolution, normalised.
pub fn norm_status(category: &str, resolution: Option<&str>, canceled: &[String]) -> NormStatus {
    if category != "done" {
        return NormStatus::Active;
    }
    match resolution {
        Some(r) if canceled.iter().any(|c| c.eq_ignore_ascii_case(r.trim())) => {
            NormStatus::Canceled
        }
        _ => NormStatus::Resolved,
    }
}

/// The preferred transition among those `ok` accepts: the first configured name
/// offered, else the first acceptable one.
fn pick<'a>(
    moves: &'a [Move],
    preferred: &[String],
    ok: impl Fn(&Move) -> bool,
) -> Option<&'a Move> {
    preferred
        .iter()
        .find_map(|p| {
            moves
                .iter()
                .find(|m| ok(m) && m.name.eq_ignore_ascii_case(p.trim()))
        })
        .or_else(|| moves.iter().find(|m| ok(m)))
}

fn names(moves: &[Move]) -> String {
    if moves.is_empty() {
        return "none".into();
    }
    moves
        .iter()
        .map(|m| format!("{} → {}", m.name, m.to_category))
        .collect::<Vec<_>>()
        .join(", ")
}

fn has_label(issue: &Value, token: &str) -> bool {
    issue
        .pointer("/fields/labels")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(token)))
}

fn page_issues(v: &Value) -> Result<Vec<Value>, TicketError> {
    v.get("issues")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| protocol("a search answer without issues"))
}

/// An issue key (`OPS-12`) or numeric id, safe in a URL path.
fn check_key(id: &str) -> Result<(), TicketError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(TicketError::Config {
            system: SYSTEM,
            message: format!("{id:?} is not a Jira issue key"),
        })
    }
}

/// Plain text as an Atlassian Document: one paragraph per line.
pub fn adf(text: &str) -> Value {
    let content: Vec<Value> = text
        .split('\n')
        .map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                json!({ "type": "paragraph", "content": [] })
            } else {
                json!({ "type": "paragraph", "content": [{ "type": "text", "text": line }] })
            }
        })
        .collect();
    json!({ "type": "doc", "version": 1, "content": content })
}

/// Jira's `2026-12-02T05:40:38.123+0000` (or RFC 3339).
fn parse_jira_time(s: &str) -> Option<OffsetDateTime> {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond][offset_hour sign:mandatory][offset_minute]"
    );
    OffsetDateTime::parse(s, &f)
        .or_else(|_| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339))
        .ok()
}

fn protocol(message: &str) -> TicketError {
    TicketError::Protocol {
        system: SYSTEM,
        message: message.into(),
    }
}

/// A 2xx answer's JSON (`null` for 204 or an empty body); anything else an error with
/// the envelope's messages.
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
    let mut message = json.as_ref().map(envelope).unwrap_or_default();
    if message.is_empty() {
        message = short(&text);
    }
    if message.is_empty() {
        message = format!("HTTP {status}");
    }
    Err(match status {
        401 | 403 => TicketError::Auth {
            system: SYSTEM,
            message,
        },
        410 => TicketError::Rejected {
            system: SYSTEM,
            status,
            message: format!("{message} (is flavour set right: cloud or datacenter?)"),
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

/// `{"errorMessages":[…],"errors":{"field":"msg"}}` in one line.
fn envelope(v: &Value) -> String {
    let mut parts: Vec<String> = v
        .get("errorMessages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if let Some(errors) = v.get("errors").and_then(Value::as_object) {
        for (field, msg) in errors {
            parts.push(format!("{field}: {}", msg.as_str().unwrap_or("")));
        }
    }
    if parts.is_empty()
        && let Some(m) = v.get("message").and_then(Value::as_str)
    {
        parts.push(m.to_string());
    }
    short(&parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_the_category_and_resolution() {
        let c = default_canceled();
        assert_eq!(norm_status("new", None, &c), NormStatus::Active);
        assert_eq!(norm_status("indeterminate", None, &c), NormStatus::Active);
        assert_eq!(norm_status("done", Some("Done"), &c), NormStatus::Resolved);
        assert_eq!(norm_status("done", None, &c), NormStatus::Resolved);
        assert_eq!(
            norm_status("done", Some("Won't Do"), &c),
            NormStatus::Canceled
        );
        assert_eq!(
            norm_status("done", Some("cancelled"), &c),
            NormStatus::Canceled
        );
    }

    #[test]
    fn jira_times_parse() {
        let t = parse_jira_time("2026-12-02T05:40:38.123+0000").unwrap();
        assert_eq!(t.unix_timestamp(), 1796190038);
        assert!(parse_jira_time("2026-12-02T06:40:38.1+0100").is_some());
        assert!(parse_jira_time("2026-12-02T05:40:38Z").is_some());
        assert!(parse_jira_time("yesterday").is_none());
    }

    #[test]
    fn adf_has_a_paragraph_per_line() {
        let d = adf("a\n\nb");
        assert_eq!(d["content"].as_array().unwrap().len(), 3);
        assert_eq!(d["content"][2]["content"][0]["text"], "b");
    }

    #[test]
    fn config_needs_one_kind_of_credentials_and_hides_them() {
        let base = json!({"url": "https://x.atlassian.net", "project": "OPS"});
        let with = |extra: Value| -> JiraConfig {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let basic = with(json!({"email": "a@b.test", "api_token": "tok-secret-1"}));
        let j = Jira::new(basic.clone(), RetryPolicy::default()).unwrap();
        assert_eq!(j.inner.api, "https://x.atlassian.net/rest/api/3");
        for shown in [format!("{j:?}"), format!("{basic:?}")] {
            assert!(!shown.contains("tok-secret-1"), "{shown}");
        }
        let both = with(json!({"email": "a@b.test", "api_token": "t", "pat": "p"}));
        assert!(Jira::new(both, RetryPolicy::default()).is_err());
        let none = with(json!({}));
        assert!(Jira::new(none, RetryPolicy::default()).is_err());
        let dc = with(json!({"pat": "p", "flavour": "datacenter"}));
        assert_eq!(
            Jira::new(dc, RetryPolicy::default()).unwrap().inner.api,
            "https://x.atlassian.net/rest/api/2"
        );
        let bad_project = with(json!({"pat": "p", "project": "o ps"}));
        assert!(Jira::new(bad_project, RetryPolicy::default()).is_err());
        let unknown: Result<JiraConfig, _> =
            serde_json::from_value(json!({"url": "http://x", "project": "OPS", "typo": 1}));
        assert!(unknown.is_err());
    }
}
