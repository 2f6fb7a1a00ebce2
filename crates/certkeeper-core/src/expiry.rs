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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

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
