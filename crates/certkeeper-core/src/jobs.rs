//! Jobs the server hands to agents: what kinds there are, the states a job moves
//! through, and when a failed job is tried again. The store keeps the jobs; these
//! rules decide.

use std::fmt;
use std::str::FromStr;

use time::{Duration, OffsetDateTime};

/// What a job asks an agent to do. New kinds (vulnerability scans, say) are added here;
/// an agent refuses kinds it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Write a certificate (and key) to files, reload, rescan the endpoint.
    Deploy,
    /// Run a vulnerability scan of endpoints this agent discovered and send the results.
    VulnScan,
    /// Answer one ACME http-01 challenge token on the agent's `[acme] http01_listen`
    /// until the order ends (the server ends the job).
    Http01,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Deploy => "deploy",
            JobKind::VulnScan => "vulnscan",
            JobKind::Http01 => "http01",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job kind nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job kind {0:?}")]
pub struct UnknownJobKind(pub String);

impl FromStr for JobKind {
    type Err = UnknownJobKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deploy" => Ok(JobKind::Deploy),
            "vulnscan" => Ok(JobKind::VulnScan),
            "http01" => Ok(JobKind::Http01),
            other => Err(UnknownJobKind(other.to_string())),
        }
    }
}

/// Where a job is. `Queued` → `Leased` (claimed by its agent until the lease ends) →
/// `Succeeded`, or back to `Queued` (a later attempt), or `Failed` (given up).
/// A lease that ends without a result counts as a failed attempt and the job is due
/// again at once (the lease was the wait), unless that was its last attempt
/// (`Store::expire_leases` applies this rule in one UPDATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Leased,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    /// Whether nothing more will happen to the job.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => JobState::Queued,
            "leased" => JobState::Leased,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            other => return Err(format!("unknown job state {other:?}")),
        })
    }
}

/// How often and how soon a failed job is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait after the first failure; each later wait is `factor` times longer.
    pub first_delay: Duration,
    pub factor: u32,
    /// No wait is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts: waits of 1, 4, 16 and 64 minutes between them.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            first_delay: Duration::minutes(1),
            factor: 4,
            max_delay: Duration::hours(6),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempt`-th failed attempt (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut d = self.first_delay;
        for _ in 1..attempt.max(1) {
            d = d.saturating_mul(self.factor as i32);
            if d >= self.max_delay {
                return self.max_delay;
            }
        }
        d.min(self.max_delay)
    }

    /// What becomes of a job whose `attempts`-th attempt failed at `now`.
    pub fn after_failure(
        &self,
        attempts: u32,
        retryable: bool,
        now: OffsetDateTime,
    ) -> AfterFailure {
        if !retryable || attempts >= self.max_attempts {
            AfterFailure::GiveUp
        } else {
            AfterFailure::RetryAt(now + self.delay(attempts))
        }
    }
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queue it again, due at this time.
    RetryAt(OffsetDateTime),
    /// Attempts used up, or a failure that another attempt cannot fix.
    GiveUp,
}

/// How long a claimed job stays with its agent before another claim may take it.
pub const DEFAULT_LEASE: Duration = Duration::minutes(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_refused() {
        assert_eq!("deploy".parse::<JobKind>(), Ok(JobKind::Deploy));
        assert_eq!(JobKind::Deploy.to_string(), "deploy");
        assert_eq!("http01".parse::<JobKind>(), Ok(JobKind::Http01));
        assert_eq!(JobKind::Http01.as_str(), "http01");
        assert!("vulnscan-tomorrow".parse::<JobKind>().is_err());
        for s in [
            JobState::Queued,
            JobState::Leased,
            JobState::Succeeded,
            JobState::Failed,
        ] {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        }
    }

    #[test]
    fn backoff_grows_then_stops_at_the_limit() {
        let p = RetryPolicy::default();
        let mins: Vec<i64> = (1..=6).map(|a| p.delay(a).whole_minutes()).collect();
        assert_eq!(mins, [1, 4, 16, 64, 256, 360]);
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            p.after_failure(1, true, now),
            AfterFailure::RetryAt(now + Duration::minutes(1))
        );
        assert_eq!(
            p.after_failure(4, true, now),
            AfterFailure::RetryAt(now + Duration::minutes(64))
        );
        assert_eq!(p.after_failure(5, true, now), AfterFailure::GiveUp);
        assert_eq!(p.after_failure(1, false, now), AfterFailure::GiveUp);
        let tiny = RetryPolicy {
            max_attempts: 100,
            first_delay: Duration::hours(1),
            factor: 1000,
            max_delay: Duration::hours(2),
        };
        assert_eq!(tiny.delay(40), Duration::hours(2), "no overflow");
    }
}
