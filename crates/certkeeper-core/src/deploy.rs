//! Deploying a certificate to files on an agent's host: the ways an attempt fails,
//! the rules the agent applies before it touches anything (allowed directories and
//! commands), and when the server counts a deployment as done.

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use time::OffsetDateTime;

use crate::Fingerprint;
use crate::jobs::JobState;
use crate::target::parse_server_name;

/// Why a deployment attempt failed. The agent reports the code; the server records it
/// with the agent's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployFailure {
    /// A file path is outside the agent's `[deploy] allowed_dirs` (refused, nothing written).
    PathNotAllowed,
    /// The reload command is not one of the agent's `[deploy] allowed_commands`.
    CommandNotAllowed,
    /// The job does not make sense (no file to write, a certificate that is not the one named…).
    BadJob,
    /// Writing, backing up or renaming a file failed.
    WriteFailed,
    /// Setting the owner, group or mode failed.
    PermissionsFailed,
    /// The reload command could not start, or exited with a non-zero status.
    ReloadFailed,
    /// The rescan found the endpoint still serving another certificate.
    OldCertificateServed,
    /// The rescan did not reach the endpoint, or no observation of it arrived.
    NotServed,
    /// The agent took the job and did not report within its lease (crashed, offline).
    LeaseExpired,
}

impl DeployFailure {
    pub const ALL: [DeployFailure; 9] = [
        DeployFailure::PathNotAllowed,
        DeployFailure::CommandNotAllowed,
        DeployFailure::BadJob,
        DeployFailure::WriteFailed,
        DeployFailure::PermissionsFailed,
        DeployFailure::ReloadFailed,
        DeployFailure::OldCertificateServed,
        DeployFailure::NotServed,
        DeployFailure::LeaseExpired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DeployFailure::PathNotAllowed => "path_not_allowed",
            DeployFailure::CommandNotAllowed => "command_not_allowed",
            DeployFailure::BadJob => "bad_job",
            DeployFailure::WriteFailed => "write_failed",
            DeployFailure::PermissionsFailed => "permissions_failed",
            DeployFailure::ReloadFailed => "reload_failed",
            DeployFailure::OldCertificateServed => "old_certificate_served",
            DeployFailure::NotServed => "not_served",
            DeployFailure::LeaseExpired => "lease_expired",
        }
    }

    /// Whether trying again can help. A refusal by the agent's own rules cannot: it
    /// stays refused until the agent's configuration (or the deployment) changes.
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            DeployFailure::PathNotAllowed
                | DeployFailure::CommandNotAllowed
                | DeployFailure::BadJob
        )
    }
}

impl fmt::Display for DeployFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for DeployFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeployFailure::ALL
            .into_iter()
            .find(|f| f.code() == s)
            .ok_or_else(|| format!("unknown deployment failure code {s:?}"))
    }
}

/// What a deployment looks like from outside, derived from its current job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentStatus {
    /// Waiting for the agent to pick it up.
    Pending,
    /// The agent has it now.
    InProgress,
    /// An attempt failed; another is due later.
    Retrying,
    /// The new certificate was seen served at the endpoint.
    Done,
    /// Given up (attempts used up, or refused by the agent); `retry` starts it again.
    Failed,
}

impl DeploymentStatus {
    pub fn of(job: JobState, attempts: u32) -> DeploymentStatus {
        match job {
            JobState::Queued if attempts == 0 => DeploymentStatus::Pending,
            JobState::Queued => DeploymentStatus::Retrying,
            JobState::Leased => DeploymentStatus::InProgress,
            JobState::Succeeded => DeploymentStatus::Done,
            JobState::Failed => DeploymentStatus::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Retrying => "retrying",
            DeploymentStatus::Done => "done",
            DeploymentStatus::Failed => "failed",
        }
    }
}

/// Why a deployment that is waiting for its agent is not moving, if it looks stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// The agent was revoked: it will never pick the job up.
    AgentRevoked,
    /// The job has been due for longer than `grace` and the agent has not asked for
    /// jobs since it fell due (last contact given, if any).
    AgentOffline(Option<OffsetDateTime>),
}

/// Whether a deployment is stalled on its agent at `now`: nothing is dropped, but a job
/// its agent does not come for is said to be waiting, with the agent's last contact.
pub fn stalled(
    status: DeploymentStatus,
    due: OffsetDateTime,
    agent_revoked: bool,
    last_contact: Option<OffsetDateTime>,
    grace: time::Duration,
    now: OffsetDateTime,
) -> Option<Stalled> {
    if !matches!(
        status,
        DeploymentStatus::Pending | DeploymentStatus::Retrying
    ) {
        return None;
    }
    if agent_revoked {
        return Some(Stalled::AgentRevoked);
    }
    (due + grace < now && last_contact.is_none_or(|c| c < due))
        .then_some(Stalled::AgentOffline(last_contact))
}

/// One recorded sighting of the deployment's endpoint: the leaf it served (if the last
/// check reached TLS) and when that leaf was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSighting {
    pub sha256: Option<Fingerprint>,
    pub last_seen: Option<OffsetDateTime>,
}

/// What the server concludes about an attempt from the endpoint's sightings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedVerdict {
    /// The expected certificate was seen served since the attempt began.
    Served,
    /// Another certificate was seen served since the attempt began.
    OtherServed(Fingerprint),
    /// Nothing was seen served since the attempt began.
    NotSeen,
}

/// Done only when the expected leaf was seen at `since` or later and no address of the
/// endpoint was seen serving another leaf in that time (one stale backend is not "done").
pub fn served_verdict(
    expected: Fingerprint,
    sightings: &[EndpointSighting],
    since: OffsetDateTime,
) -> ServedVerdict {
    let fresh = sightings
        .iter()
        .filter(|s| s.last_seen.is_some_and(|t| t >= since))
        .filter_map(|s| s.sha256);
    let mut served = false;
    for sha in fresh {
        if sha != expected {
            return ServedVerdict::OtherServed(sha);
        }
        served = true;
    }
    if served {
        ServedVerdict::Served
    } else {
        ServedVerdict::NotSeen
    }
}

/// A deployment's endpoint, `host:port` (`[v6]:port` for IPv6 literals).
pub fn parse_endpoint(s: &str) -> Result<(String, u16), String> {
    let t = s.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{t:?} is not [address]:port"))?;
        (h, p)
    } else {
        t.rsplit_once(':')
            .ok_or_else(|| format!("{t:?} is not host:port"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{t:?}: the port must be 1 to 65535"))?;
    let host = parse_server_name(host).map_err(|e| e.to_string())?;
    Ok((host, port))
}

/// A command line as argv: split on whitespace, no quoting, no shell. What the server
/// sends is compared with the agent's allowed commands in this form, word for word.
pub fn split_command(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Whether `argv` is exactly one of the allowed command lines.
pub fn command_allowed(argv: &[String], allowed: &[String]) -> bool {
    !argv.is_empty() && allowed.iter().any(|a| split_command(a) == argv)
}

/// A file path a deployment may name: absolute, with no `.` or `..` components (so
/// a textual check of its directory means what it says).
pub fn check_file_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!("{} contains . or .. components", p.display()));
    }
    if p.file_name().is_none() {
        return Err(format!("{} names no file", p.display()));
    }
    Ok(())
}

/// Whether `dir` (already resolved: no symlinks, no `..`) is one of `allowed` or below one.
pub fn dir_allowed(dir: &Path, allowed: &[&Path]) -> bool {
    allowed.iter().any(|a| dir.starts_with(a))
}

/// File modes a deployment may set: permission bits only (no setuid, setgid, sticky).
pub fn check_mode(mode: u32) -> Result<(), String> {
    if mode > 0o777 {
        return Err(format!(
            "mode {mode:o} has bits beyond rwxrwxrwx (setuid, setgid or sticky)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_bytes([b; 32])
    }

    #[test]
    fn failure_codes_round_trip_and_refusals_are_final() {
        for f in DeployFailure::ALL {
            assert_eq!(f.code().parse::<DeployFailure>(), Ok(f));
        }
        assert!(!DeployFailure::PathNotAllowed.retryable());
        assert!(!DeployFailure::CommandNotAllowed.retryable());
        assert!(DeployFailure::ReloadFailed.retryable());
        assert!(DeployFailure::OldCertificateServed.retryable());
        assert!(DeployFailure::LeaseExpired.retryable());
        assert!("made_up".parse::<DeployFailure>().is_err());
    }

    #[test]
    fn status_follows_the_job() {
        assert_eq!(
            DeploymentStatus::of(JobState::Queued, 0),
            DeploymentStatus::Pending
        );
        assert_eq!(
            DeploymentStatus::of(JobState::Queued, 2),
            DeploymentStatus::Retrying
        );
        assert_eq!(
            DeploymentStatus::of(JobState::Leased, 1),
            DeploymentStatus::InProgress
        );
        assert_eq!(
            DeploymentStatus::of(JobState::Succeeded, 1),
            DeploymentStatus::Done
        );
        assert_eq!(
            DeploymentStatus::of(JobState::Failed, 5),
            DeploymentStatus::Failed
        );
    }

    #[test]
    fn a_job_its_agent_does_not_come_for_is_stalled() {
        let due = OffsetDateTime::UNIX_EPOCH + Duration::days(1000);
        let grace = Duration::minutes(10);
        let at = |m: i64| due + Duration::minutes(m);
        let p = DeploymentStatus::Pending;
        assert_eq!(
            stalled(p, due, false, None, grace, at(5)),
            None,
            "within the grace"
        );
        assert_eq!(
            stalled(p, due, false, None, grace, at(11)),
            Some(Stalled::AgentOffline(None))
        );
        assert_eq!(
            stalled(
                DeploymentStatus::Retrying,
                due,
                false,
                Some(at(-60)),
                grace,
                at(11)
            ),
            Some(Stalled::AgentOffline(Some(at(-60))))
        );
        assert_eq!(
            stalled(p, due, false, Some(at(1)), grace, at(11)),
            None,
            "it asked after it fell due"
        );
        assert_eq!(
            stalled(DeploymentStatus::Done, due, false, None, grace, at(99)),
            None
        );
        assert_eq!(
            stalled(
                DeploymentStatus::InProgress,
                due,
                false,
                None,
                grace,
                at(99)
            ),
            None
        );
        assert_eq!(
            stalled(p, due, true, Some(at(1)), grace, at(0)),
            Some(Stalled::AgentRevoked)
        );
    }

    #[test]
    fn served_only_when_the_new_leaf_is_seen_since_the_attempt() {
        let t0 = OffsetDateTime::UNIX_EPOCH + Duration::days(1000);
        let seen = |b: Option<u8>, t: i64| EndpointSighting {
            sha256: b.map(fp),
            last_seen: Some(t0 + Duration::seconds(t)),
        };
        assert_eq!(
            served_verdict(fp(1), &[seen(Some(1), 5)], t0),
            ServedVerdict::Served
        );
        assert_eq!(
            served_verdict(fp(1), &[seen(Some(2), 5)], t0),
            ServedVerdict::OtherServed(fp(2))
        );
        assert_eq!(
            served_verdict(fp(1), &[seen(Some(1), -5)], t0),
            ServedVerdict::NotSeen,
            "a sighting from before the attempt proves nothing"
        );
        assert_eq!(
            served_verdict(fp(1), &[seen(Some(1), 5), seen(Some(2), 6)], t0),
            ServedVerdict::OtherServed(fp(2)),
            "one address still serving the old leaf"
        );
        assert_eq!(
            served_verdict(fp(1), &[seen(Some(1), 5), seen(Some(2), -60)], t0),
            ServedVerdict::Served
        );
        assert_eq!(served_verdict(fp(1), &[], t0), ServedVerdict::NotSeen);
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint("Web.Example:443"),
            Ok(("web.example".into(), 443))
        );
        assert_eq!(parse_endpoint("[::1]:8443"), Ok(("::1".into(), 8443)));
        assert_eq!(parse_endpoint("127.0.0.1:1"), Ok(("127.0.0.1".into(), 1)));
        for bad in [
            "web.example",
            "web.example:0",
            "web.example:http",
            "https://x:443",
            ":443",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_are_compared_as_argv() {
        let allowed = vec![
            "systemctl reload nginx".to_string(),
            "nginx  -s reload".into(),
        ];
        assert!(command_allowed(
            &split_command("systemctl reload  nginx"),
            &allowed
        ));
        assert!(command_allowed(&split_command("nginx -s reload"), &allowed));
        assert!(!command_allowed(
            &split_command("systemctl reload nginx; rm -rf /"),
            &allowed
        ));
        assert!(!command_allowed(
            &split_command("systemctl restart nginx"),
            &allowed
        ));
        assert!(!command_allowed(&[], &allowed));
    }

    #[test]
    fn paths_are_absolute_plain_and_inside() {
        assert!(check_file_path(Path::new("/etc/nginx/tls/site.pem")).is_ok());
        assert!(check_file_path(Path::new("tls/site.pem")).is_err());
        assert!(check_file_path(Path::new("/etc/nginx/tls/../../shadow")).is_err());
        let allowed = [Path::new("/etc/nginx/tls")];
        assert!(dir_allowed(Path::new("/etc/nginx/tls"), &allowed));
        assert!(dir_allowed(Path::new("/etc/nginx/tls/sub"), &allowed));
        assert!(!dir_allowed(Path::new("/etc/nginx/tlsx"), &allowed));
        assert!(!dir_allowed(Path::new("/etc"), &allowed));
        assert!(check_mode(0o600).is_ok());
        assert!(check_mode(0o4755).is_err());
    }
}
