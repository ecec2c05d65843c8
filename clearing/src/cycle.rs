//! Cycles: one business day in the coalition's time zone, from one cut-off to the next. A cycle is
//! named by the calendar date that holds most of it:
//!
//! - a cut-off before noon (00:00, a night audit at 04:00) *opens* business day D on D: the cycle
//!   from 04:00 on the 22nd to 04:00 on the 23rd is the 22nd (with 00:00, the calendar day itself);
//! - a cut-off at noon or later (an evening cut-off at 23:00) *closes* business day D on D: the
//!   cycle from 23:00 on the 21st to 23:00 on the 22nd is the 22nd.
//!
//! Either way a transaction at noon on D belongs to cycle D, which is what a person reading a
//! statement expects. Days of 23 or 25 hours are cycles like any other; a cut-off that falls in a
//! DST gap moves to the first instant after the gap.
//!
//! The calendar is total over [`FIRST_CYCLE`]..=[`LAST_CYCLE`]: every date maths function returns an
//! error outside that range instead of panicking, so a date typed by a person can never stop a
//! clearing run half-way.

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;

/// Unix microseconds, UTC.
pub type Micros = i64;

/// The earliest business date the calendar knows.
pub const FIRST_CYCLE: NaiveDate = match NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(d) => d,
    None => panic!("a valid constant date"),
};
/// The latest business date the calendar knows.
pub const LAST_CYCLE: NaiveDate = match NaiveDate::from_ymd_opt(2199, 12, 31) {
    Some(d) => d,
    None => panic!("a valid constant date"),
};

/// A cycle configuration problem, or a date outside the calendar.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CycleError {
    /// The cut-off is not a time of day.
    #[error("cut-off {0} minutes is not a time of day")]
    BadCutoff(u32),
    /// A business date outside the calendar's range.
    #[error(
        "{0} is outside the business dates this coalition clears ({FIRST_CYCLE} to {LAST_CYCLE})"
    )]
    OutOfRange(NaiveDate),
    /// An instant outside the calendar's range.
    #[error("instant {0} µs is outside the calendar")]
    InstantOutOfRange(Micros),
}

/// The cycle calendar: time zone and daily cut-off.
#[derive(Debug, Clone, Copy)]
pub struct Cycles {
    tz: Tz,
    cutoff: NaiveTime,
}

/// Noon: cut-offs before it open the business day they name, later ones close it.
const NOON: NaiveTime = match NaiveTime::from_hms_opt(12, 0, 0) {
    Some(t) => t,
    None => panic!("a valid constant time"),
};

fn in_range(d: NaiveDate) -> Result<NaiveDate, CycleError> {
    if (FIRST_CYCLE..=LAST_CYCLE).contains(&d) {
        Ok(d)
    } else {
        Err(CycleError::OutOfRange(d))
    }
}

/// A business date written as `YYYY-MM-DD` between [`FIRST_CYCLE`] and [`LAST_CYCLE`], or `None`
/// (chrono alone would take signed and five-digit years, `+262142-12-31`: the shape is insisted
/// on). The one parser of a cycle's name: requests and the config both use it.
pub fn parse_business_date(s: &str) -> Option<NaiveDate> {
    let shape = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|d| (FIRST_CYCLE..=LAST_CYCLE).contains(d))
}

/// The day after `d`, within the calendar.
pub fn next_day(d: NaiveDate) -> Result<NaiveDate, CycleError> {
    d.succ_opt()
        .ok_or(CycleError::OutOfRange(d))
        .and_then(in_range)
}

/// The day before `d`, within the calendar.
pub fn previous_day(d: NaiveDate) -> Result<NaiveDate, CycleError> {
    d.pred_opt()
        .ok_or(CycleError::OutOfRange(d))
        .and_then(in_range)
}

impl Cycles {
    /// A calendar for `tz` with the cut-off `cutoff_minutes` after local midnight.
    pub fn new(tz: Tz, cutoff_minutes: u32) -> Result<Cycles, CycleError> {
        let cutoff = NaiveTime::from_hms_opt(cutoff_minutes / 60, cutoff_minutes % 60, 0)
            .filter(|_| cutoff_minutes < 24 * 60)
            .ok_or(CycleError::BadCutoff(cutoff_minutes))?;
        Ok(Cycles { tz, cutoff })
    }

    /// The local wall time `date` `time` as an instant; in a DST gap, the first instant after it;
    /// when ambiguous (the hour repeated in autumn), the earlier.
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> Result<Micros, CycleError> {
        let mut naive = date.and_time(time);
        // No time zone has a gap of two hours; four half-hour steps always find an instant.
        for _ in 0..4 {
            if let Some(t) = self.tz.from_local_datetime(&naive).earliest() {
                return Ok(t.timestamp_micros());
            }
            naive += Duration::minutes(30);
        }
        Err(CycleError::OutOfRange(date))
    }

    /// Whether the cut-off opens the business day it names (before noon) or closes it.
    pub fn named_by_opening(&self) -> bool {
        self.cutoff < NOON
    }

    /// The instant cycle `d` closes (exclusive end).
    pub fn close(&self, d: NaiveDate) -> Result<Micros, CycleError> {
        let d = in_range(d)?;
        if self.named_by_opening() {
            let next = d.succ_opt().ok_or(CycleError::OutOfRange(d))?;
            self.instant(next, self.cutoff)
        } else {
            self.instant(d, self.cutoff)
        }
    }

    /// The instant cycle `d` opens (inclusive start): the close of the day before.
    pub fn open(&self, d: NaiveDate) -> Result<Micros, CycleError> {
        let d = in_range(d)?;
        let before = d.pred_opt().ok_or(CycleError::OutOfRange(d))?;
        if self.named_by_opening() {
            self.instant(d, self.cutoff)
        } else {
            self.instant(before, self.cutoff)
        }
    }

    /// The cycle an instant belongs to: `open(d) <= at < close(d)`.
    pub fn cycle_of(&self, at: Micros) -> Result<NaiveDate, CycleError> {
        let local = self
            .tz
            .timestamp_micros(at)
            .single()
            .ok_or(CycleError::InstantOutOfRange(at))?
            .date_naive();
        for d in [
            local.pred_opt(),
            Some(local),
            local.succ_opt(),
            local.succ_opt().and_then(|d| d.succ_opt()),
        ]
        .into_iter()
        .flatten()
        {
            if let (Ok(open), Ok(close)) = (self.open(d), self.close(d))
                && open <= at
                && at < close
            {
                return Ok(d);
            }
        }
        Err(CycleError::InstantOutOfRange(at))
    }

    /// The latest cycle that has closed at `now` (its close <= now).
    pub fn last_closed(&self, now: Micros) -> Result<NaiveDate, CycleError> {
        previous_day(self.cycle_of(now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn midnight_cutoff_cycles_are_calendar_days() {
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, 0).unwrap();
        let open = c.open(d("2026-11-22")).unwrap();
        assert_eq!(
            chrono::DateTime::from_timestamp_micros(open)
                .unwrap()
                .to_rfc3339(),
            "2026-11-21T23:00:00+00:00"
        );
        assert_eq!(c.cycle_of(open).unwrap(), d("2026-11-22"));
        assert_eq!(c.cycle_of(open - 1).unwrap(), d("2026-11-21"));
        assert_eq!(c.close(d("2026-11-22")).unwrap() - open, 86_400_000_000);
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, 0).unwrap();
        let hours = |s: &str| (c.close(d(s)).unwrap() - c.open(d(s)).unwrap()) / 3_600_000_000;
        assert_eq!(hours("2026-03-29"), 23);
        assert_eq!(hours("2026-10-25"), 25);
        assert_eq!(hours("2026-10-26"), 24);
    }

    #[test]
    fn evening_cutoff_closes_the_business_day() {
        let c = Cycles::new(chrono_tz::America::New_York, 22 * 60).unwrap();
        // 2026-11-22 21:59 local is in cycle 22nd, 22:00 starts the 23rd.
        let close = c.close(d("2026-11-22")).unwrap();
        assert_eq!(c.cycle_of(close - 60_000_000).unwrap(), d("2026-11-22"));
        assert_eq!(c.cycle_of(close).unwrap(), d("2026-11-23"));
    }

    #[test]
    fn a_cutoff_in_the_dst_gap_moves_past_it() {
        // 02:30 does not exist in Amsterdam on 2026-03-29: the 28th closes (and the 29th opens)
        // at 03:00 local, 01:00 UTC.
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, 2 * 60 + 30).unwrap();
        let close = c.close(d("2026-03-28")).unwrap();
        assert_eq!(utc(close), "2026-03-29T01:00:00+00:00");
        assert_eq!(c.cycle_of(close).unwrap(), d("2026-03-29"));
        assert_eq!(c.open(d("2026-03-29")).unwrap(), close);
    }

    fn utc(at: Micros) -> String {
        chrono::DateTime::from_timestamp_micros(at)
            .unwrap()
            .to_rfc3339()
    }

    /// The instant of a local wall time in Amsterdam (the earlier when ambiguous).
    fn ams(s: &str) -> Micros {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        chrono_tz::Europe::Amsterdam
            .from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_micros()
    }

    /// Checks, for a cut-off in Amsterdam, each (local time, cycle) pair, and that every cycle of
    /// `days` opens where the one before closes, lasting `hours`.
    fn check(cutoff: u32, at: &[(&str, &str)], days: &[(&str, i64)]) {
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, cutoff).unwrap();
        for (local, cycle) in at {
            assert_eq!(
                c.cycle_of(ams(local)).unwrap(),
                d(cycle),
                "cut-off {cutoff}: {local} local"
            );
        }
        for (day, hours) in days {
            let (open, close) = (c.open(d(day)).unwrap(), c.close(d(day)).unwrap());
            assert_eq!(c.close(previous_day(d(day)).unwrap()).unwrap(), open);
            assert_eq!((close - open) / 3_600_000_000, *hours, "cycle {day}");
            assert_eq!(c.cycle_of(open).unwrap(), d(day));
            assert_eq!(c.cycle_of(close - 1).unwrap(), d(day));
        }
    }

    #[test]
    fn midnight_cutoff_in_amsterdam_around_both_dst_days() {
        check(
            0,
            &[
                ("2026-03-28 23:59", "2026-03-28"),
                ("2026-03-29 00:00", "2026-03-29"),
                ("2026-03-29 03:30", "2026-03-29"),
                ("2026-03-29 23:59", "2026-03-29"),
                ("2026-10-25 02:30", "2026-10-25"),
                ("2026-10-25 23:59", "2026-10-25"),
                ("2026-10-26 00:00", "2026-10-26"),
            ],
            &[
                ("2026-03-28", 24),
                ("2026-03-29", 23),
                ("2026-03-30", 24),
                ("2026-10-24", 24),
                ("2026-10-25", 25),
                ("2026-10-26", 24),
            ],
        );
    }

    #[test]
    fn night_audit_at_four_names_the_day_it_opens() {
        // The business day that starts at 04:00 on the 22nd is the 22nd.
        check(
            4 * 60,
            &[
                ("2026-11-22 03:59", "2026-11-21"),
                ("2026-11-22 04:00", "2026-11-22"),
                ("2026-11-22 12:00", "2026-11-22"),
                ("2026-11-23 03:59", "2026-11-22"),
                ("2026-11-23 04:00", "2026-11-23"),
                // Spring: the night of the 28th to the 29th loses its 02:00-03:00 hour.
                ("2026-03-29 01:59", "2026-03-28"),
                ("2026-03-29 03:00", "2026-03-28"),
                ("2026-03-29 03:59", "2026-03-28"),
                ("2026-03-29 04:00", "2026-03-29"),
                // Autumn: 02:00-03:00 happens twice in the night of the 24th to the 25th.
                ("2026-10-25 02:30", "2026-10-24"),
                ("2026-10-25 03:59", "2026-10-24"),
                ("2026-10-25 04:00", "2026-10-25"),
            ],
            &[
                ("2026-03-27", 24),
                ("2026-03-28", 23),
                ("2026-03-29", 24),
                ("2026-10-23", 24),
                ("2026-10-24", 25),
                ("2026-10-25", 24),
            ],
        );
    }

    #[test]
    fn evening_cutoff_at_23_names_the_day_it_closes() {
        // The business day from 23:00 on the 21st to 23:00 on the 22nd is the 22nd.
        check(
            23 * 60,
            &[
                ("2026-11-21 22:59", "2026-11-21"),
                ("2026-11-21 23:00", "2026-11-22"),
                ("2026-11-22 12:00", "2026-11-22"),
                ("2026-11-22 22:59", "2026-11-22"),
                ("2026-11-22 23:00", "2026-11-23"),
                ("2026-03-28 23:00", "2026-03-29"),
                ("2026-03-29 03:00", "2026-03-29"),
                ("2026-03-29 22:59", "2026-03-29"),
                ("2026-10-24 23:00", "2026-10-25"),
                ("2026-10-25 02:30", "2026-10-25"),
                ("2026-10-25 22:59", "2026-10-25"),
            ],
            &[
                ("2026-03-28", 24),
                ("2026-03-29", 23),
                ("2026-03-30", 24),
                ("2026-10-24", 24),
                ("2026-10-25", 25),
                ("2026-10-26", 24),
            ],
        );
    }

    #[test]
    fn dates_outside_the_calendar_are_errors_not_panics() {
        let c = Cycles::new(chrono_tz::Pacific::Apia, 0).unwrap();
        for bad in [
            NaiveDate::MAX,
            NaiveDate::MIN,
            d("0000-01-01"),
            d("9999-12-31"),
            d("1999-12-31"),
        ] {
            assert_eq!(c.close(bad), Err(CycleError::OutOfRange(bad)));
            assert_eq!(c.open(bad), Err(CycleError::OutOfRange(bad)));
        }
        assert!(c.cycle_of(i64::MAX).is_err());
        assert!(c.cycle_of(i64::MIN).is_err());
        assert!(c.close(LAST_CYCLE).is_ok() && c.open(FIRST_CYCLE).is_ok());
        assert!(next_day(LAST_CYCLE).is_err() && previous_day(FIRST_CYCLE).is_err());
    }
}
