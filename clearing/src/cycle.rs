//! Cycles: one business day in the coalition's time zone, from one cut-off to the next. A cycle is
//! named by its business date D and closes at the cut-off of D (with a cut-off of 00:00, at the
//! midnight that ends D, so the cycle is the calendar day D). Days of 23 or 25 hours are cycles like
//! any other; a cut-off that falls in a DST gap moves to the first instant after the gap.

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;

/// Unix microseconds, UTC.
pub type Micros = i64;

/// A cycle configuration problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CycleError {
    /// The cut-off is not a time of day.
    #[error("cut-off {0} minutes is not a time of day")]
    BadCutoff(u32),
}

/// The cycle calendar: time zone and daily cut-off.
#[derive(Debug, Clone, Copy)]
pub struct Cycles {
    tz: Tz,
    cutoff: NaiveTime,
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
    fn instant(&self, date: NaiveDate, time: NaiveTime) -> Micros {
        let mut naive = date.and_time(time);
        for _ in 0..4 {
            if let Some(t) = self.tz.from_local_datetime(&naive).earliest() {
                return t.timestamp_micros();
            }
            naive += Duration::minutes(30);
        }
        unreachable!("no time zone has a gap of two hours")
    }

    /// The instant cycle `d` closes (exclusive end).
    pub fn close(&self, d: NaiveDate) -> Micros {
        if self.cutoff == NaiveTime::MIN {
            self.instant(d.succ_opt().expect("date in range"), self.cutoff)
        } else {
            self.instant(d, self.cutoff)
        }
    }

    /// The instant cycle `d` opens (inclusive start): the close of the day before.
    pub fn open(&self, d: NaiveDate) -> Micros {
        self.close(d.pred_opt().expect("date in range"))
    }

    /// The cycle an instant belongs to: `open(d) <= at < close(d)`.
    pub fn cycle_of(&self, at: Micros) -> NaiveDate {
        let local = self
            .tz
            .timestamp_micros(at)
            .single()
            .expect("an instant has one local time")
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
            if self.open(d) <= at && at < self.close(d) {
                return d;
            }
        }
        unreachable!("every instant is in one of the cycles around its local date")
    }

    /// The latest cycle that has closed at `now` (its close <= now).
    pub fn last_closed(&self, now: Micros) -> NaiveDate {
        self.cycle_of(now).pred_opt().expect("date in range")
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
        let open = c.open(d("2026-11-22"));
        assert_eq!(
            chrono::DateTime::from_timestamp_micros(open)
                .unwrap()
                .to_rfc3339(),
            "2026-11-21T23:00:00+00:00"
        );
        assert_eq!(c.cycle_of(open), d("2026-11-22"));
        assert_eq!(c.cycle_of(open - 1), d("2026-11-21"));
        assert_eq!(c.close(d("2026-11-22")) - open, 86_400_000_000);
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, 0).unwrap();
        let hours = |s: &str| (c.close(d(s)) - c.open(d(s))) / 3_600_000_000;
        assert_eq!(hours("2026-03-29"), 23);
        assert_eq!(hours("2026-10-25"), 25);
        assert_eq!(hours("2026-10-26"), 24);
    }

    #[test]
    fn evening_cutoff_closes_the_business_day() {
        let c = Cycles::new(chrono_tz::America::New_York, 22 * 60).unwrap();
        // 2026-11-22 21:59 local is in cycle 22nd, 22:00 starts the 23rd.
        let close = c.close(d("2026-11-22"));
        assert_eq!(c.cycle_of(close - 60_000_000), d("2026-11-22"));
        assert_eq!(c.cycle_of(close), d("2026-11-23"));
    }

    #[test]
    fn a_cutoff_in_the_dst_gap_moves_past_it() {
        // 02:30 does not exist in Amsterdam on 2026-03-29.
        let c = Cycles::new(chrono_tz::Europe::Amsterdam, 2 * 60 + 30).unwrap();
        let close = c.close(d("2026-03-29"));
        assert_eq!(
            chrono::DateTime::from_timestamp_micros(close)
                .unwrap()
                .to_rfc3339(),
            "2026-03-29T01:00:00+00:00"
        );
        assert_eq!(c.cycle_of(close), d("2026-03-30"));
    }
}
