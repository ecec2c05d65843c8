//! Clearing, pure: from one cycle's allocations, issuance fees and prices to a settlement —
//! gross matrix, bilateral and multilateral net positions, rounding with the residual spread by
//! largest remainder, payment instructions, control totals, and a canonical form with its SHA-256
//! digest chained to the previous cycle's. No I/O: the daemon gathers the inputs and stores the
//! output.

pub mod csv_writer;
pub mod cycle;
pub mod export;
pub mod plan;
pub mod reconcile;
pub mod settle;

pub use cycle::{
    CycleError, Cycles, FIRST_CYCLE, LAST_CYCLE, next_day, parse_business_date, previous_day,
};
pub use plan::{Plan, Rules};
pub use settle::*;
