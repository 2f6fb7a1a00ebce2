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

/// Why a CA's suggested renewal window (ARI, RFC 9773) is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The window ends before (or when) it starts.
    #[error("the suggested renewal window ends before it starts")]
    Inverted,
    /// The window starts after the certificate has expired.
    #[error("the suggested renewal window starts after the certificate expires")]
    AfterExpiry,
}

/// The renewal time inside a CA's suggested window (RFC 9773 §4.2): the point
/// `fraction` (0.0 to 1.0, chosen at random by the caller so that replicas and
/// certificates spread out) of the way from `start` to `end`. A window that makes no
/// sense is refused, and the caller falls back to [`renewal_time`]. A window already
/// in the past yields a time in the past: renew at once.
pub fn ari_renewal_time(
    start: OffsetDateTime,
    end: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> Result<OffsetDateTime, WindowError> {
    if end <= start {
        return Err(WindowError::Inverted);
    }
    if start >= not_after {
        return Err(WindowError::AfterExpiry);
    }
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // Never later than the certificate's own expiry, whatever the window says.
    let end = end.min(not_after);
    Ok(start + (end - start) * fraction)
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
    fn ari_window_picks_a_point_inside_it_and_refuses_nonsense() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + Duration::days(90);
        let start = nb + Duration::days(40);
        let end = nb + Duration::days(42);
        assert_eq!(ari_renewal_time(start, end, na, 0.0), Ok(start));
        assert_eq!(ari_renewal_time(start, end, na, 1.0), Ok(end));
        assert_eq!(
            ari_renewal_time(start, end, na, 0.5),
            Ok(nb + Duration::days(41))
        );
        // Out-of-range and NaN fractions stay inside the window.
        assert_eq!(ari_renewal_time(start, end, na, 7.0), Ok(end));
        assert_eq!(ari_renewal_time(start, end, na, f64::NAN), Ok(start));
        // The CA's window is earlier than the two-thirds default (say, after an incident).
        let early = ari_renewal_time(nb, nb + Duration::days(1), na, 0.5).unwrap();
        assert!(early < renewal_time(nb, na));
        // A window reaching past expiry is cut at expiry.
        assert_eq!(
            ari_renewal_time(na - Duration::days(2), na + Duration::days(10), na, 1.0),
            Ok(na)
        );
        assert_eq!(
            ari_renewal_time(end, start, na, 0.5),
            Err(WindowError::Inverted)
        );
        assert_eq!(
            ari_renewal_time(start, start, na, 0.5),
            Err(WindowError::Inverted)
        );
        assert_eq!(
            ari_renewal_time(na, na + Duration::days(1), na, 0.5),
            Err(WindowError::AfterExpiry)
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
