//! When a certificate expires, relative to a clock the caller passes in.

use time::{Duration, OffsetDateTime};

/// Where a certificate stands on its validity timeline at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryState {
    /// `not_before` is still in the future.
    NotYetValid,
    /// Valid, with more than the window left.
    Valid,
    /// Valid, but expires within the window.
    ExpiringSoon,
    /// `not_after` has passed.
    Expired,
}

/// Classify a validity period against `now` and a warning window.
pub fn expiry_state(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    window: Duration,
) -> ExpiryState {
    if now > not_after {
        ExpiryState::Expired
    } else if now < not_before {
        ExpiryState::NotYetValid
    } else if not_after - now <= window {
        ExpiryState::ExpiringSoon
    } else {
        ExpiryState::Valid
    }
}

/// The latest `not_after` that counts as "expiring within `days` days" at `now`.
/// Already-expired certificates are included by every such query.
pub fn expiring_cutoff(now: OffsetDateTime, days: u32) -> OffsetDateTime {
    now + Duration::days(i64::from(days))
}

/// Whole days left until `not_after`, negative once expired.
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (not_after - now).whole_days()
}

/// When to renew: two thirds through the validity period (cert-manager's default),
/// unless the CA said otherwise.
pub fn renewal_time(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Where a certificate is on a notification policy's ladder of thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Expired: notifies once per policy period until renewed or retired.
    Expired,
    /// Within this many days (the smallest threshold not below the days left).
    Within(u32),
}

/// The stage of a certificate expiring at `not_after`, or `None` when it is further
/// out than the largest threshold. Thresholds are days, e.g. `[30, 14, 7, 1]`.
pub fn stage(not_after: OffsetDateTime, now: OffsetDateTime, thresholds: &[u32]) -> Option<Stage> {
    if now > not_after {
        return Some(Stage::Expired);
    }
    let left = not_after - now;
    thresholds
        .iter()
        .copied()
        .filter(|t| left <= Duration::days(i64::from(*t)))
        .min()
        .map(Stage::Within)
}

/// The key that makes a notification happen once: once per threshold crossed, and for
/// expired certificates once per period (`period_start` is the start of the policy's
/// current daily or weekly period). Two runs, restarts or replicas in one period
/// produce the same key, so a unique index on it prevents a second message.
pub fn notification_key(
    policy: &str,
    sha256: &str,
    stage: Stage,
    period_start: OffsetDateTime,
) -> String {
    match stage {
        Stage::Within(days) => format!("{policy}|{sha256}|{days}d"),
        Stage::Expired => format!(
            "{policy}|{sha256}|expired|{}",
            period_start.unix_timestamp()
        ),
    }
}

/// Inside the escalation window (default 7 days) and still not renewed.
pub fn escalated(not_after: OffsetDateTime, now: OffsetDateTime, escalation_days: u32) -> bool {
    not_after - now <= Duration::days(i64::from(escalation_days))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renews_two_thirds_through() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        assert_eq!(
            renewal_time(nb, nb + Duration::days(90)),
            nb + Duration::days(60)
        );
    }

    #[test]
    fn thresholds_and_notification_keys() {
        let na = datetime!(2026-12-31 0:00 UTC);
        let ladder = [30, 14, 7, 1];
        assert_eq!(stage(na, datetime!(2026-11-01 0:00 UTC), &ladder), None);
        assert_eq!(
            stage(na, datetime!(2026-12-01 0:00 UTC), &ladder),
            Some(Stage::Within(30))
        );
        assert_eq!(
            stage(na, datetime!(2026-12-20 0:00 UTC), &ladder),
            Some(Stage::Within(14))
        );
        assert_eq!(
            stage(na, datetime!(2026-12-30 12:00 UTC), &ladder),
            Some(Stage::Within(1))
        );
        assert_eq!(
            stage(na, datetime!(2027-01-02 0:00 UTC), &ladder),
            Some(Stage::Expired)
        );
        let p1 = datetime!(2027-01-02 0:00 UTC);
        let p2 = datetime!(2027-01-03 0:00 UTC);
        assert_eq!(
            notification_key("default", "ab", Stage::Within(14), p1),
            notification_key("default", "ab", Stage::Within(14), p2),
            "a threshold notifies once"
        );
        assert_ne!(
            notification_key("default", "ab", Stage::Expired, p1),
            notification_key("default", "ab", Stage::Expired, p2),
            "an expired certificate notifies every period"
        );
        assert!(escalated(na, datetime!(2026-12-25 0:00 UTC), 7));
        assert!(!escalated(na, datetime!(2026-12-20 0:00 UTC), 7));
    }

    #[test]
    fn classifies_against_the_injected_clock() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = datetime!(2026-12-31 0:00 UTC);
        let w = Duration::days(30);
        assert_eq!(
            expiry_state(nb, na, datetime!(2025-12-31 0:00 UTC), w),
            ExpiryState::NotYetValid
        );
        assert_eq!(
            expiry_state(nb, na, datetime!(2026-06-01 0:00 UTC), w),
            ExpiryState::Valid
        );
        assert_eq!(
            expiry_state(nb, na, datetime!(2026-12-01 0:00 UTC), w),
            ExpiryState::ExpiringSoon
        );
        assert_eq!(
            expiry_state(nb, na, datetime!(2027-01-01 0:00 UTC), w),
            ExpiryState::Expired
        );
        assert_eq!(days_left(na, datetime!(2026-12-01 0:00 UTC)), 30);
        assert_eq!(
            expiring_cutoff(datetime!(2026-12-01 0:00 UTC), 30),
            datetime!(2026-12-31 0:00 UTC)
        );
    }
}
