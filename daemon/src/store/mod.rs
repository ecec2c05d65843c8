//! The storage seam and its one body. The services see only [`Store`] (reads, the audit and the
//! rare writes) and [`writer::Writer`] (the group-commit queue for mutations). The decision logic
//! of a batch ([`batch`]) and every query are written once, generic over sqlx's database; what
//! differs between SQLite and PostgreSQL is named in [`dialect`].

pub mod access;
pub mod audit;
pub mod batch;
pub mod body;
pub mod bulk;
pub mod chain;
pub mod clearing;
pub mod consent;
pub mod dialect;
pub mod error;
pub mod feed;
pub mod holds;
pub mod instances;
pub mod lots;
pub mod matrix;
pub mod model;
pub mod open;
pub mod postgres;
pub mod programme;
pub mod reconciliation;
pub mod registry;
pub mod report;
pub mod responses;
pub mod retention;
pub mod rows;
pub mod seam;
pub mod sqlite;
pub mod sqlite_alloc;
pub mod writer;

pub use batch::LedgerTx;
pub use error::StoreError;
pub use model::{
    BreakageFact, IssuanceRow, Op, PartnerOverride, Rejection, Request, TxnRecord, Writes,
};
pub use open::{migrate, open};
pub use seam::{Applied, BatchBackend, OpenBackend, Store};
