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

/// A time zone: UTC offsets over time. From a TZif file of the system's time zone
/// database (read by the caller; parsed here, RFC 8536), or a fixed offset. After the
/// file's last transition the last offset holds (Debian's files list transitions to
/// 2037).
#[derive(Clone, PartialEq, Eq)]
pub struct Zone {
    name: String,
    /// (UTC second from which, offset in seconds), sorted.
    transitions: std::sync::Arc<[(i64, i32)]>,
    /// The offset before the first transition.
    before: i32,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Default for Zone {
    fn default() -> Self {
        Zone::utc()
    }
}

impl Zone {
    pub fn utc() -> Zone {
        Zone::fixed("UTC", 0)
    }

    /// A fixed offset from UTC, in seconds east.
    pub fn fixed(name: &str, offset: i32) -> Zone {
        Zone {
            name: name.to_string(),
            transitions: std::sync::Arc::from(Vec::new()),
            before: offset,
        }
    }

    /// `+02:00`, `-0530`, `UTC`, `Z`: a fixed offset.
    pub fn parse_fixed(s: &str) -> Option<Zone> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Some(Zone::utc());
        }
        let (sign, rest) = match t.as_bytes().first()? {
            b'+' => (1, &t[1..]),
            b'-' => (-1, &t[1..]),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
        (h <= 14 && m < 60).then(|| Zone::fixed(t, sign * (h * 3600 + m * 60)))
    }

    /// Parse a TZif file (version 2 or later: its 64-bit data).
    pub fn from_tzif(name: &str, data: &[u8]) -> Result<Zone, String> {
        let bad = |why: &str| format!("time zone {name}: {why}");
        let header = |d: &[u8]| -> Result<[usize; 6], String> {
            if d.len() < 44 || &d[..4] != b"TZif" {
                return Err(bad("not a TZif file"));
            }
            let mut c = [0usize; 6];
            for (i, v) in c.iter_mut().enumerate() {
                let o = 20 + i * 4;
                *v = u32::from_be_bytes(d[o..o + 4].try_into().expect("4 bytes")) as usize;
            }
            Ok(c)
        };
        let [isut, isstd, leap, timecnt, typecnt, charcnt] = header(data)?;
        if data[4] < b'2' {
            return Err(bad("version 1 files are not supported"));
        }
        let v1 = timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut;
        let d2 = data.get(44 + v1..).ok_or_else(|| bad("truncated"))?;
        let [_isut, _isstd, _leap, timecnt, typecnt, _charcnt] = header(d2)?;
        let body = &d2[44..];
        let need = timecnt * 9 + typecnt * 6;
        if body.len() < need || typecnt == 0 {
            return Err(bad("truncated"));
        }
        let types: Vec<i32> = (0..typecnt)
            .map(|i| {
                let o = timecnt * 9 + i * 6;
                i32::from_be_bytes(body[o..o + 4].try_into().expect("4 bytes"))
            })
            .collect();
        let mut transitions = Vec::with_capacity(timecnt);
        for i in 0..timecnt {
            let at = i64::from_be_bytes(body[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let ty = usize::from(body[timecnt * 8 + i]);
            let off = *types
                .get(ty)
                .ok_or_else(|| bad("a transition names no type"))?;
            transitions.push((at, off));
        }
        Ok(Zone {
            name: name.to_string(),
            transitions: std::sync::Arc::from(transitions),
            before: types[0],
        })
    }

    /// The offset from UTC (seconds east) in force at `unix`.
    pub fn offset_at(&self, unix: i64) -> i32 {
        match self.transitions.partition_point(|(t, _)| *t <= unix) {
            0 => self.before,
            n => self.transitions[n - 1].1,
        }
    }
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

    /// The latest occurrence at or before `now`, the times read on the wall clock of
    /// `zone` ("daily 09:00" in Europe/Berlin is 08:00 UTC in winter, 07:00 in summer).
    pub fn previous_in(&self, now: OffsetDateTime, zone: &Zone) -> Option<OffsetDateTime> {
        let shift = |t: OffsetDateTime, secs: i32| t + Duration::seconds(i64::from(secs));
        let mut local_now = shift(now, zone.offset_at(now.unix_timestamp()));
        for _ in 0..3 {
            let local = self.previous(local_now)?;
            // The offset at that wall-clock time: guess with the one now, then settle.
            let guess = shift(local, -zone.offset_at(now.unix_timestamp()));
            let at = shift(local, -zone.offset_at(guess.unix_timestamp()));
            if at <= now {
                return Some(at);
            }
            // Across a change of offset the wall-clock time maps past `now`: look earlier.
            local_now = local - Duration::minutes(1);
        }
        None
    }

    /// [`Schedule::due`] on the wall clock of `zone`.
    pub fn due_in(
        &self,
        now: OffsetDateTime,
        grace: Duration,
        zone: &Zone,
    ) -> Option<OffsetDateTime> {
        self.previous_in(now, zone).filter(|p| now - *p <= grace)
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
    fn wall_clock_times_in_a_zone() {
        // Europe/Berlin from the system's database: CET (+1) in winter, CEST (+2) in summer.
        let Ok(data) = std::fs::read("/usr/share/zoneinfo/Europe/Berlin") else {
            panic!("tzdata is needed (Debian's tzdata package)");
        };
        let z = Zone::from_tzif("Europe/Berlin", &data).unwrap();
        assert_eq!(
            z.offset_at(datetime!(2026-12-02 12:00 UTC).unix_timestamp()),
            3600
        );
        assert_eq!(
            z.offset_at(datetime!(2026-07-02 12:00 UTC).unix_timestamp()),
            7200
        );
        let s: Schedule = "daily 09:00".parse().unwrap();
        assert_eq!(
            s.previous_in(datetime!(2026-12-02 10:30 UTC), &z),
            Some(datetime!(2026-12-02 08:00 UTC))
        );
        assert_eq!(
            s.previous_in(datetime!(2026-07-02 07:30 UTC), &z),
            Some(datetime!(2026-07-02 07:00 UTC))
        );
        assert_eq!(
            s.previous_in(datetime!(2026-07-02 06:59 UTC), &z),
            Some(datetime!(2026-07-01 07:00 UTC))
        );
        // The night clocks go forward (29 Mar 2026, 02:00 → 03:00): 02:30 does not
        // exist that day; the occurrence falls at the change, never after now.
        let s: Schedule = "daily 02:30".parse().unwrap();
        let p = s.previous_in(datetime!(2026-03-29 02:00 UTC), &z).unwrap();
        assert!(p <= datetime!(2026-03-29 02:00 UTC));
        let w: Schedule = "weekly mon 08:00".parse().unwrap();
        let k = Zone::parse_fixed("+05:30").unwrap();
        assert_eq!(
            w.previous_in(datetime!(2026-12-02 10:30 UTC), &k),
            Some(datetime!(2026-11-30 02:30 UTC))
        );
        assert!(Zone::parse_fixed("+25:00").is_none());
        assert!(Zone::from_tzif("x", b"not a zone").is_err());
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
