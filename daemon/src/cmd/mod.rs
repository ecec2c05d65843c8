//! The commands: every subcommand of the `coalitiond` binary. Nothing in the library imports this
//! room; it stands on the library (the daemon, its clients, the store for the benches).
//!
//! - [`cli`]: the command line and what each subcommand runs (`serve`, `demo`, `certs`, `audit`,
//!   `compact`, `bench`, …);
//! - [`demo`]: a whole day at three partners; [`bench`]: the benches;
//! - [`partner`] (with [`partner_calls`]), [`finance`], [`ops`], [`programme`], [`report`]: the
//!   clients of each role, over mTLS.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod finance;
pub mod ops;
pub mod partner;
pub mod partner_calls;
pub mod programme;
pub mod report;

pub use cli::{Cli, Command, run};
