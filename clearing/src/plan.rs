//! What a clearing run needs besides the ledger: the coalition's rules (calendar, currency,
//! rounding, first business day) and the plan of one run.

use crate::cycle::{Cycles, Micros};
use crate::settle::Rounding;
use chrono::NaiveDate;

/// What a clearing run needs besides the database.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The cycle to clear.
    pub cycle: NaiveDate,
    /// Now (the cycle must have closed).
    pub now: Micros,
    /// The calendar.
    pub cycles: Cycles,
    /// Settlement currency and its minor units.
    pub currency: String,
    /// Minor units of the currency.
    pub minor_units: u32,
    /// Rounding of net positions.
    pub rounding: Rounding,
    /// Run only if no other daemon is clearing right now (the scheduler); finance runs wait.
    pub skip_if_busy: bool,
    /// The coalition's first business day from config, if set.
    pub first_cycle: Option<NaiveDate>,
}

/// The coalition's clearing rules, from its config: what every run and every audit of a
/// settlement needs besides the ledger.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The calendar.
    pub cycles: Cycles,
    /// Settlement currency.
    pub currency: String,
    /// Minor units of the currency.
    pub minor_units: u32,
    /// Rounding of net positions.
    pub rounding: Rounding,
    /// The coalition's first business day, if the config sets one.
    pub first_cycle: Option<NaiveDate>,
}

impl Rules {
    /// The plan of one run of `cycle` at `now`.
    pub fn plan(&self, cycle: NaiveDate, now: Micros, skip_if_busy: bool) -> Plan {
        Plan {
            cycle,
            now,
            cycles: self.cycles,
            currency: self.currency.clone(),
            minor_units: self.minor_units,
            rounding: self.rounding,
            skip_if_busy,
            first_cycle: self.first_cycle,
        }
    }
}
