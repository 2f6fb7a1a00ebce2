//! When recurring work is due: `daily HH:MM`, `weekly DAY HH:MM` (UTC), or a cron
//! expression (POSIX/Vixie, five fields, UTC; parsed by `croner`). Pure: the caller
//! passes the time. Scheduled work is claimed per occurrence in the database, so
//! several replicas run it once.

use std::fmt;
use std::str::FromStr;

use time::{Duration, OffsetDateTime, Weekday};

/// A parsed schedule.
#[derive(Clone)]
pub enum Schedule {
    Daily { hour: u8, minute: u8 },
    Weekly { day: Weekday, hour: u8, minute: u8 },
    Cron(Box<croner::Cron>, String),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Daily { hour, minute } => write!(f, "daily {hour:02}:{minute:02}"),
            Schedule::Weekly { day, hour, minute } => {
                write!(
                    f,
                    "weekly {} {hour:02}:{minute:02}",
                    &day.to_string()[..3].to_ascii_lowercase()
                )
            }
            Schedule::Cron(_, text) => f.write_str(text),
        }
    }
}

/// A schedule that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "schedule {text:?}: {why} (expected \"daily HH:MM\", \"weekly mon HH:MM\" or a cron expression)"
)]
pub struct ScheduleError {
    pub text: String,
    pub why: String,
}

fn hh_mm(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s.get(..3)?.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ScheduleError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["daily", t] => {
                let (hour, minute) = hh_mm(t).ok_or_else(|| err("the time must be HH:MM"))?;
                Ok(Schedule::Daily { hour, minute })
            }
            ["weekly", d, t] => {
                let day = weekday(d).ok_or_else(|| err("the day must be mon … sun"))?;
                let (hour, minute) = hh_mm(t).ok_or_else(|| err("the time must be HH:MM"))?;
                Ok(Schedule::Weekly { day, hour, minute })
            }
            ["daily", ..] | ["weekly", ..] => Err(err("wrong number of words")),
            w if w.len() == 5 => {
                let c = croner::Cron::from_str(text).map_err(|e| err(&e.to_string()))?;
                Ok(Schedule::Cron(Box::new(c), text.to_string()))
            }
            _ => Err(err("not understood")),
        }
    }
}

fn at(day: OffsetDateTime, hour: u8, minute: u8) -> OffsetDateTime {
    day.replace_time(time::Time::from_hms(hour, minute, 0).expect("checked at parse"))
}

impl Schedule {
    /// The latest occurrence at or before `now` (UTC), if any.
    pub fn previous(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let now = now.to_offset(time::UtcOffset::UTC);
        match self {
            Schedule::Daily { hour, minute } => {
                let today = at(now, *hour, *minute);
                Some(if today <= now {
                    today
                } else {
                    today - Duration::days(1)
                })
            }
            Schedule::Weekly { day, hour, minute } => {
                let back = (7 + now.weekday().number_days_from_monday() as i64
                    - day.number_days_from_monday() as i64)
                    % 7;
                let t = at(now - Duration::days(back), *hour, *minute);
                Some(if t <= now { t } else { t - Duration::weeks(1) })
            }
            Schedule::Cron(c, _) => {
                let n = chrono::DateTime::<chrono::Utc>::from_timestamp(now.unix_timestamp(), 0)?;
                let p = c.find_previous_occurrence(&n, true).ok()?;
                OffsetDateTime::from_unix_timestamp(p.timestamp()).ok()
            }
        }
    }

    /// The occurrence that is due at `now`: the latest one, if it is no older than
    /// `grace` (an occurrence missed by more, while no server ran, is skipped).
    pub fn due(&self, now: OffsetDateTime, grace: Duration) -> Option<OffsetDateTime> {
        self.previous(now).filter(|p| now - *p <= grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn daily_weekly_and_cron_find_their_last_occurrence() {
        let now = datetime!(2026-12-02 10:30 UTC); // a Wednesday
        let s: Schedule = "daily 09:00".parse().unwrap();
        assert_eq!(s.previous(now), Some(datetime!(2026-12-02 09:00 UTC)));
        let s: Schedule = "daily 11:00".parse().unwrap();
        assert_eq!(s.previous(now), Some(datetime!(2026-12-01 11:00 UTC)));
        let s: Schedule = "weekly mon 02:00".parse().unwrap();
        assert_eq!(s.previous(now), Some(datetime!(2026-11-30 02:00 UTC)));
        let s: Schedule = "weekly wed 12:00".parse().unwrap();
        assert_eq!(s.previous(now), Some(datetime!(2026-11-25 12:00 UTC)));
        let s: Schedule = "weekly Wednesday 10:30".parse().unwrap();
        assert_eq!(s.previous(now), Some(now));
        let s: Schedule = "15 3 * * MON-FRI".parse().unwrap();
        assert_eq!(s.previous(now), Some(datetime!(2026-12-02 03:15 UTC)));
        let s: Schedule = "*/5 * * * *".parse().unwrap();
        assert_eq!(s.previous(datetime!(2026-12-02 10:33:20 UTC)), Some(now));
        assert_eq!(s.to_string(), "*/5 * * * *");
        assert_eq!(
            "weekly sun 23:59".parse::<Schedule>().unwrap().to_string(),
            "weekly sun 23:59"
        );
    }

    #[test]
    fn only_a_recent_occurrence_is_due() {
        let s: Schedule = "daily 09:00".parse().unwrap();
        let grace = Duration::minutes(15);
        assert_eq!(
            s.due(datetime!(2026-12-02 09:10 UTC), grace),
            Some(datetime!(2026-12-02 09:00 UTC))
        );
        assert_eq!(s.due(datetime!(2026-12-02 09:20 UTC), grace), None);
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        for bad in [
            "daily 25:00",
            "daily 9",
            "weekly xyz 09:00",
            "hourly",
            "61 * * * *",
            "daily",
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
