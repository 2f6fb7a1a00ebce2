//! Expiry notifications, pure: which certificates a policy notifies about at a
//! given time and why the others are left out, the key that makes each message go
//! out once, and the digest a recipient receives (text, HTML, CSV).
//!
//! A policy notifies once per threshold a certificate crosses (30, 14, 7, 1 days by
//! default; a certificate first seen at 10 days left gets the 14-day message, not
//! the 30-day one as well). An expired certificate notifies once per period of the
//! policy's schedule until it is renewed or retired. Within the escalation window
//! (7 days by default) the escalation recipients are told as well, and the ticket
//! goes to the highest priority.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use time::{Duration, OffsetDateTime};

use crate::schedule::{Schedule, Zone};

/// A channel a notification goes out through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Email,
    Syslog,
    Webhook,
    Slack,
    PagerDuty,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Email,
        Channel::Syslog,
        Channel::Webhook,
        Channel::Slack,
        Channel::PagerDuty,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Syslog => "syslog",
            Channel::Webhook => "webhook",
            Channel::Slack => "slack",
            Channel::PagerDuty => "pagerduty",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!("unknown channel {s:?} (email, syslog, webhook, slack, pagerduty)")
            })
    }
}

/// Which certificates a policy is about. Empty lists match everything; each list
/// that is set must match (one of its entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Owners (the team owning a certificate, or an owner set on it).
    pub owners: Vec<String>,
    pub tags: Vec<String>,
    /// Case-insensitive substrings of the issuer DN (`Let's Encrypt`, `CN=Corp CA`).
    pub issuers: Vec<String>,
    /// Name patterns matched against the CN and every SAN: `*` matches any run of
    /// characters (`*.example.com`, `*prod*`), case-insensitively.
    pub names: Vec<String>,
}

impl Scope {
    /// `None` when the certificate is in scope, else the rule it fails.
    pub fn excludes(&self, c: &CertView) -> Option<String> {
        if !self.owners.is_empty()
            && !c
                .owner
                .as_deref()
                .is_some_and(|o| self.owners.iter().any(|w| w.eq_ignore_ascii_case(o)))
        {
            return Some(format!(
                "owner {} is not one of {}",
                c.owner.as_deref().unwrap_or("(none)"),
                self.owners.join(", ")
            ));
        }
        if !self.tags.is_empty() && !c.tags.iter().any(|t| self.tags.contains(t)) {
            return Some(format!("has none of the tags {}", self.tags.join(", ")));
        }
        if !self.issuers.is_empty() {
            let issuer = c.issuer.to_ascii_lowercase();
            if !self
                .issuers
                .iter()
                .any(|i| issuer.contains(&i.to_ascii_lowercase()))
            {
                return Some(format!(
                    "issuer {} matches none of {}",
                    c.issuer,
                    self.issuers.join(", ")
                ));
            }
        }
        if !self.names.is_empty() {
            let names = c.names();
            if !self
                .names
                .iter()
                .any(|p| names.iter().any(|n| glob_match(p, n)))
            {
                return Some(format!("no name matches {}", self.names.join(", ")));
            }
        }
        None
    }
}

/// `*` matches any run of characters; everything else literally, ignoring case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An expiry notification policy.
#[derive(Debug, Clone)]
pub struct ExpiryPolicy {
    pub name: String,
    /// Thresholds in days, largest first.
    pub within_days: Vec<u32>,
    pub schedule: Schedule,
    /// The wall clock the schedule's times are read on.
    pub zone: Zone,
    pub scope: Scope,
    pub channels: Vec<Channel>,
    /// E-mail recipients; empty: the `[email] to` list.
    pub recipients: Vec<String>,
    /// Days before expiry from which a certificate escalates.
    pub escalation_days: u32,
    /// Told as well once a certificate escalates.
    pub escalation_recipients: Vec<String>,
    /// Open and follow expiry tickets in the configured ticketing systems.
    pub tickets: bool,
}

impl ExpiryPolicy {
    /// The default policy: 30, 14, 7 and 1 days, daily at 09:00 UTC, every
    /// configured channel, escalation at 7 days, tickets on.
    pub fn default_policy(channels: Vec<Channel>) -> Self {
        ExpiryPolicy {
            name: "default".into(),
            within_days: vec![30, 14, 7, 1],
            schedule: Schedule::Daily { hour: 9, minute: 0 },
            zone: Zone::utc(),
            scope: Scope::default(),
            channels,
            recipients: Vec::new(),
            escalation_days: 7,
            escalation_recipients: Vec::new(),
            tickets: true,
        }
    }

    /// Normalise thresholds: largest first, no duplicates, no zero.
    pub fn normalise(mut self) -> Self {
        self.within_days.retain(|d| *d > 0);
        self.within_days.sort_unstable_by(|a, b| b.cmp(a));
        self.within_days.dedup();
        self
    }

    /// The widest window: certificates expiring later are not looked at.
    pub fn horizon(&self) -> u32 {
        self.within_days
            .first()
            .copied()
            .unwrap_or(0)
            .max(self.escalation_days)
    }
}

/// Where a certificate is served now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedAt {
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// What the notification rules need to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertView {
    pub sha256: String,
    /// Lower-case hex, no colons.
    pub serial: String,
    pub common_name: Option<String>,
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_after: OffsetDateTime,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    pub retired: bool,
    /// The certificate that replaced it, when it counts as renewed.
    pub renewed_by: Option<String>,
    /// The endpoints serving it now.
    pub served_at: Vec<ServedAt>,
}

impl CertView {
    /// CN and SANs, without duplicates.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.common_name.iter().cloned().collect();
        for s in &self.sans {
            if !v.iter().any(|n| n.eq_ignore_ascii_case(s)) {
                v.push(s.clone());
            }
        }
        v
    }

    /// The name a person recognises it by.
    pub fn display_name(&self) -> String {
        self.common_name
            .clone()
            .or_else(|| self.sans.first().cloned())
            .unwrap_or_else(|| format!("serial {}", self.serial))
    }
}

/// The step of the expiry ladder a certificate is on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Expires within this many days (the smallest threshold it is within).
    Within(u32),
    Expired,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Within(d) => write!(f, "{d}d"),
            Stage::Expired => f.write_str("expired"),
        }
    }
}

/// The stage at `now`: expired, or the smallest threshold the remaining time is
/// within; `None` when further out than every threshold.
pub fn stage(thresholds: &[u32], not_after: OffsetDateTime, now: OffsetDateTime) -> Option<Stage> {
    let left = not_after - now;
    if left <= Duration::ZERO {
        return Some(Stage::Expired);
    }
    thresholds
        .iter()
        .copied()
        .filter(|d| left <= Duration::days(i64::from(*d)))
        .min()
        .map(Stage::Within)
}

/// A certificate a policy notifies about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub stage: Stage,
    /// Whole days left; negative once expired.
    pub days_left: i64,
    pub escalated: bool,
}

/// Why a certificate is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    Retired,
    Renewed { by: String },
    OutOfScope { rule: String },
    NotYetWithin { days_left: i64, threshold: u32 },
}

impl LeftOut {
    pub fn code(&self) -> &'static str {
        match self {
            LeftOut::Retired => "retired",
            LeftOut::Renewed { .. } => "renewed",
            LeftOut::OutOfScope { .. } => "out_of_scope",
            LeftOut::NotYetWithin { .. } => "not_yet_within",
        }
    }
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftOut::Retired => f.write_str("marked retired"),
            LeftOut::Renewed { by } => write!(f, "renewed: replaced by {by}"),
            LeftOut::OutOfScope { rule } => write!(f, "out of the policy's scope: {rule}"),
            LeftOut::NotYetWithin {
                days_left,
                threshold,
            } => write!(f, "{days_left} days left, not yet within {threshold} days"),
        }
    }
}

/// The policy's verdict on one certificate at `now`.
pub fn evaluate(p: &ExpiryPolicy, c: &CertView, now: OffsetDateTime) -> Result<Due, LeftOut> {
    if c.retired {
        return Err(LeftOut::Retired);
    }
    if let Some(by) = &c.renewed_by {
        return Err(LeftOut::Renewed { by: by.clone() });
    }
    if let Some(rule) = p.scope.excludes(c) {
        return Err(LeftOut::OutOfScope { rule });
    }
    let days_left = crate::expiry::days_left(c.not_after, now);
    let escalated = c.not_after - now <= Duration::days(i64::from(p.escalation_days));
    match stage(&p.within_days, c.not_after, now) {
        Some(stage) => Ok(Due {
            stage,
            days_left,
            escalated,
        }),
        None => Err(LeftOut::NotYetWithin {
            days_left,
            threshold: p.within_days.first().copied().unwrap_or(0),
        }),
    }
}

/// The key that makes a message go out once: a threshold is told once per
/// certificate and policy, an expired certificate once per period (the schedule
/// occurrence `period` the run belongs to).
pub fn message_key(policy: &str, sha256: &str, stage: Stage, period: OffsetDateTime) -> String {
    match stage {
        Stage::Within(d) => format!("expiry|{policy}|{sha256}|{d}"),
        Stage::Expired => format!(
            "expiry|{policy}|{sha256}|expired|{}",
            period.unix_timestamp()
        ),
    }
}

/// The period a run at `now` belongs to: the schedule's latest occurrence (on the
/// zone's wall clock), or `now` itself for a schedule with none yet.
pub fn period(schedule: &Schedule, zone: &Zone, now: OffsetDateTime) -> OffsetDateTime {
    schedule.previous_in(now, zone).unwrap_or(now)
}

/// One certificate in a digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DigestItem {
    pub name: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub sha256: String,
    pub issuer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub days_left: i64,
    pub stage: Stage,
    pub escalated: bool,
    /// `host:port (ip)` of each endpoint serving it.
    pub endpoints: Vec<String>,
    /// The distinct addresses serving it.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

impl DigestItem {
    pub fn from_view(c: &CertView, due: &Due) -> Self {
        DigestItem {
            name: c.display_name(),
            sans: c.sans.clone(),
            serial: c.serial.clone(),
            sha256: c.sha256.clone(),
            issuer: c.issuer.clone(),
            not_after: c.not_after,
            days_left: due.days_left,
            stage: due.stage,
            escalated: due.escalated,
            endpoints: c
                .served_at
                .iter()
                .map(|s| format!("{}:{} ({})", s.host, s.port, s.ip))
                .collect(),
            ips: distinct_ips(&c.served_at),
        }
    }

    /// "expires in 7 days (Dec 09, 2026)" / "EXPIRED 3 days ago (…)".
    pub fn when(&self) -> String {
        let date = crate::tickets::ticket_date(self.not_after);
        match self.days_left {
            d if self.stage == Stage::Expired => {
                format!("EXPIRED {} days ago ({date})", d.unsigned_abs())
            }
            0 => format!("expires today ({date})"),
            1 => format!("expires in 1 day ({date})"),
            d => format!("expires in {d} days ({date})"),
        }
    }
}

/// The distinct addresses of `served`, in order of first appearance.
pub fn distinct_ips(served: &[ServedAt]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    for s in served {
        if !v.contains(&s.ip) {
            v.push(s.ip);
        }
    }
    v
}

/// Digest subject: `certkeeper: 3 certificates expiring soon (1 expired)`.
pub fn digest_subject(items: &[DigestItem]) -> String {
    let expired = items.iter().filter(|i| i.stage == Stage::Expired).count();
    let n = items.len();
    let noun = if n == 1 {
        "certificate"
    } else {
        "certificates"
    };
    match expired {
        0 => format!("certkeeper: {n} {noun} expiring soon"),
        e if e == n => format!("certkeeper: {n} {noun} expired"),
        e => format!("certkeeper: {n} {noun} expiring soon ({e} expired)"),
    }
}

fn sorted(items: &[DigestItem]) -> Vec<&DigestItem> {
    let mut v: Vec<&DigestItem> = items.iter().collect();
    v.sort_by(|a, b| a.not_after.cmp(&b.not_after).then(a.name.cmp(&b.name)));
    v
}

/// How many certificates a digest's text and HTML list; the CSV holds them all.
pub const BODY_LIMIT: usize = 500;

fn more_line(total: usize, shown: usize) -> Option<String> {
    (total > shown).then(|| {
        format!(
            "... and {} more certificates, all of them in the attached CSV.",
            total - shown
        )
    })
}

/// The plain-text body: one paragraph per certificate, soonest first, at most
/// [`BODY_LIMIT`].
pub fn digest_text(items: &[DigestItem], external_url: &str) -> String {
    digest_text_limited(items, external_url, BODY_LIMIT)
}

/// [`digest_text`] listing at most `limit` certificates (a chat message is short).
pub fn digest_text_limited(items: &[DigestItem], external_url: &str, limit: usize) -> String {
    let mut s = String::new();
    let all = sorted(items);
    for i in all.iter().take(limit) {
        s.push_str(&format!(
            "{}{} {}\n  serial {}  issuer {}\n",
            if i.escalated { "[ESCALATED] " } else { "" },
            i.name,
            i.when(),
            i.serial,
            i.issuer
        ));
        if !i.sans.is_empty() {
            s.push_str(&format!("  names: {}\n", i.sans.join(", ")));
        }
        for e in &i.endpoints {
            s.push_str(&format!("  served at {e}\n"));
        }
        s.push_str(&format!(
            "  {external_url}/api/v1/certificates/{}\n\n",
            i.sha256
        ));
    }
    if let Some(more) = more_line(all.len(), limit) {
        s.push_str(&more);
        s.push_str("\n\n");
    }
    s.push_str(&format!(
        "Scanned by: certkeeper running at {external_url}\n"
    ));
    s
}

/// Escape text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The HTML body: a table, soonest first, everything escaped.
pub fn digest_html(items: &[DigestItem], external_url: &str) -> String {
    let mut s = String::from(
        "<!DOCTYPE html><html><body><table border=\"1\" cellpadding=\"4\">\
         <tr><th>Certificate</th><th>Expiry</th><th>Serial</th><th>Issuer</th><th>Served at</th></tr>",
    );
    let all = sorted(items);
    for i in all.iter().take(BODY_LIMIT) {
        s.push_str(&format!(
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if i.escalated || i.stage == Stage::Expired {
                " style=\"color:#b00\""
            } else {
                ""
            },
            html_escape(&i.name),
            html_escape(&i.when()),
            html_escape(&i.serial),
            html_escape(&i.issuer),
            html_escape(&i.endpoints.join(", ")),
        ));
    }
    s.push_str("</table>");
    if let Some(more) = more_line(all.len(), BODY_LIMIT) {
        s.push_str(&format!("<p>{}</p>", html_escape(&more)));
    }
    s.push_str(&format!(
        "<p>Scanned by: certkeeper running at {}</p></body></html>",
        html_escape(external_url)
    ));
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV attachment (RFC 4180), one row per certificate.
pub fn digest_csv(items: &[DigestItem]) -> String {
    let mut s = String::from(
        "common_name,sans,serial,sha256,issuer,not_after,days_left,stage,escalated,endpoints\r\n",
    );
    for i in sorted(items) {
        let fields = [
            i.name.clone(),
            i.sans.join(" "),
            i.serial.clone(),
            i.sha256.clone(),
            i.issuer.clone(),
            i.not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            i.days_left.to_string(),
            i.stage.to_string(),
            i.escalated.to_string(),
            i.endpoints.join(" "),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        s.push_str(&row.join(","));
        s.push_str("\r\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-02 09:00 UTC);

    fn cert(days: i64) -> CertView {
        CertView {
            sha256: "ab".repeat(32),
            serial: "0a1b".into(),
            common_name: Some("www.example.com".into()),
            sans: vec!["www.example.com".into(), "api.example.com".into()],
            issuer: "CN=Example CA, O=Example".into(),
            not_after: NOW + Duration::days(days) + Duration::hours(1),
            owner: Some("web".into()),
            tags: vec!["prod".into()],
            retired: false,
            renewed_by: None,
            served_at: vec![ServedAt {
                host: "www.example.com".into(),
                ip: "192.0.2.10".parse().unwrap(),
                port: 443,
            }],
        }
    }

    fn policy() -> ExpiryPolicy {
        ExpiryPolicy::default_policy(vec![Channel::Email])
    }

    #[test]
    fn crosses_each_threshold_once_in_order() {
        let p = policy();
        // cert(d) expires d days and one hour from NOW.
        let stages: Vec<Option<Stage>> = [30, 29, 14, 13, 7, 6, 1, 0]
            .iter()
            .map(|d| evaluate(&p, &cert(*d), NOW).ok().map(|d| d.stage))
            .collect();
        assert_eq!(
            stages,
            vec![
                None,
                Some(Stage::Within(30)),
                Some(Stage::Within(30)),
                Some(Stage::Within(14)),
                Some(Stage::Within(14)),
                Some(Stage::Within(7)),
                Some(Stage::Within(7)),
                Some(Stage::Within(1)),
            ]
        );
        let mut c = cert(0);
        c.not_after = NOW - Duration::hours(1);
        let due = evaluate(&p, &c, NOW).unwrap();
        assert_eq!(due.stage, Stage::Expired);
        assert!(due.escalated);
        assert!(!evaluate(&p, &cert(7), NOW).unwrap().escalated);
        assert!(evaluate(&p, &cert(6), NOW).unwrap().escalated);
    }

    #[test]
    fn left_out_with_reasons() {
        let p = policy();
        assert_eq!(
            evaluate(&p, &cert(40), NOW),
            Err(LeftOut::NotYetWithin {
                days_left: 40,
                threshold: 30
            })
        );
        let mut c = cert(3);
        c.retired = true;
        assert_eq!(evaluate(&p, &c, NOW), Err(LeftOut::Retired));
        let mut c = cert(3);
        c.renewed_by = Some("cd".repeat(32));
        assert_eq!(evaluate(&p, &c, NOW).unwrap_err().code(), "renewed");
        let mut p2 = policy();
        p2.scope.names = vec!["*.internal".into()];
        let e = evaluate(&p2, &cert(3), NOW).unwrap_err();
        assert_eq!(e.code(), "out_of_scope");
        assert!(e.to_string().contains("*.internal"), "{e}");
        p2.scope.names = vec!["API.*".into()];
        assert!(evaluate(&p2, &cert(3), NOW).is_ok(), "a SAN matches");
        let mut p3 = policy();
        p3.scope.owners = vec!["db".into()];
        assert!(evaluate(&p3, &cert(3), NOW).is_err());
        p3.scope.owners = vec!["WEB".into()];
        p3.scope.issuers = vec!["example ca".into()];
        p3.scope.tags = vec!["prod".into()];
        assert!(evaluate(&p3, &cert(3), NOW).is_ok());
    }

    #[test]
    fn message_keys_threshold_once_expired_per_period() {
        let s: Schedule = "daily 09:00".parse().unwrap();
        let day1 = period(&s, &Zone::utc(), NOW + Duration::hours(3));
        let day1_again = period(&s, &Zone::utc(), NOW + Duration::hours(20));
        let day2 = period(&s, &Zone::utc(), NOW + Duration::hours(25));
        assert_eq!(day1, day1_again);
        assert_ne!(day1, day2);
        let sha = "ab".repeat(32);
        assert_eq!(
            message_key("p", &sha, Stage::Within(7), day1),
            message_key("p", &sha, Stage::Within(7), day2),
            "a threshold is told once"
        );
        assert_ne!(
            message_key("p", &sha, Stage::Expired, day1),
            message_key("p", &sha, Stage::Expired, day2),
            "expired is told every period"
        );
        assert_eq!(
            message_key("p", &sha, Stage::Expired, day1),
            message_key("p", &sha, Stage::Expired, day1_again)
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.example.com", "www.example.com"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(glob_match("*prod*", "db-prod-1.corp"));
        assert!(glob_match("exact.host", "EXACT.host"));
        assert!(!glob_match("a*b", "acbd"));
        assert!(glob_match("a*b*", "acbd"));
    }

    #[test]
    fn digest_renders_text_html_and_csv() {
        let p = policy();
        let c1 = cert(6);
        let mut c2 = cert(20);
        c2.common_name = Some("<script>\"x\",y".into());
        let items: Vec<DigestItem> = [&c1, &c2]
            .iter()
            .map(|c| DigestItem::from_view(c, &evaluate(&p, c, NOW).unwrap()))
            .collect();
        assert_eq!(
            digest_subject(&items),
            "certkeeper: 2 certificates expiring soon"
        );
        let text = digest_text(&items, "https://ck.test");
        assert!(
            text.find("www.example.com").unwrap() < text.find("<script>").unwrap(),
            "soonest first"
        );
        assert!(text.contains("[ESCALATED] www.example.com expires in 6 days (Dec 08, 2026)"));
        assert!(text.contains("served at www.example.com:443 (192.0.2.10)"));
        let html = digest_html(&items, "https://ck.test");
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;&quot;x&quot;,y"));
        let csv = digest_csv(&items);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines.len(), 4, "{csv}");
        assert!(
            lines[2].starts_with("\"<script>\"\"x\"\",y\","),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn long_digests_list_the_soonest_and_attach_all() {
        let p = policy();
        let mut items = Vec::new();
        for n in 0..(BODY_LIMIT + 7) {
            let mut c = cert(3);
            c.common_name = Some(format!("h{n}.example.com"));
            c.not_after += Duration::minutes(n as i64);
            items.push(DigestItem::from_view(&c, &evaluate(&p, &c, NOW).unwrap()));
        }
        let text = digest_text(&items, "https://ck.test");
        assert!(text.contains("h0.example.com "));
        assert!(!text.contains(&format!("h{}.example.com ", BODY_LIMIT)));
        assert!(text.contains("... and 7 more certificates, all of them in the attached CSV."));
        let html = digest_html(&items, "https://ck.test");
        assert_eq!(
            html.matches("<tr").count(),
            BODY_LIMIT + 1,
            "the header row and the listed ones"
        );
        assert!(html.contains("and 7 more"));
        assert_eq!(digest_csv(&items).matches("\r\n").count(), BODY_LIMIT + 8);
        let short = digest_text_limited(&items, "https://ck.test", 3);
        assert!(short.contains("... and 504 more"));
    }
}
