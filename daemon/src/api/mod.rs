//! The gRPC handlers: wire types in, the services' rules, wire types out. Prost types stay in this
//! room; errors become statuses only in [`error`].

pub mod caller;
pub mod consent;
pub mod error;
pub mod events;
pub mod finance;
pub mod ingest;
pub mod operator;
pub mod partner;
pub mod programme;
pub mod reconcile;
pub mod report;
pub mod views;
pub mod wire;
