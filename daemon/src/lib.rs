//! `coalitiond`: the coalition's clearing daemon. See ARCHITECTURE.md for the map.
//!
//! - [`ledger`]: the pure lot ledger (earn, burn, reversals, debt).
//! - [`store`]: the storage seam, the shared batch logic, group commit, SQLite.
//! - [`api`]: the gRPC services and the one error-to-status map.
//! - [`server`]: TLS acceptor, identity layer, health, reflection.
//! - [`daemon`]: wiring one running daemon together.
//! - [`cli`]: the subcommands (`serve`, `demo`, `certs`, `bench`, `audit`).

pub mod api;
pub mod client;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod devsetup;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod ops;
pub mod prices;
pub mod privacy;
pub mod programme;
pub mod report;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod signals;
pub mod store;
