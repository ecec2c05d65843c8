//! The gRPC services: wire types in, domain types to the ledger and store, wire types out.
//! Prost types stay in this module; errors become statuses only in [`error`].

pub mod consent;
pub mod error;
pub mod finance;
pub mod ingest;
pub mod operator;
pub mod partner;
pub mod programme;
pub mod reconcile;
pub mod report;
pub mod validate;
pub mod views;

use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;
use crate::store::writer::Writer;
use std::sync::Arc;

/// What every service shares.
#[derive(Clone)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Reads.
    pub store: Arc<dyn Store>,
    /// The group-commit queue for mutations.
    pub writer: Writer,
    /// The daemon's clock.
    pub clock: Clock,
    /// Per-partner rate limits and suspension.
    pub limits: Arc<crate::ops::limits::Limits>,
    /// The TLS configuration in force (reloadable).
    pub tls: Arc<crate::server::tls::TlsState>,
    /// Price versions (re-read every few seconds).
    pub prices: Arc<crate::prices::PriceBook>,
    /// What the writer and the scheduler report for health (`server::health`).
    pub health: Arc<crate::server::health::Signals>,
}

impl Shared {
    /// Refuses a call naming a forgotten member (`MEMBER_FORGOTTEN`). Writes are checked again
    /// inside their batch, after the member is locked; this is for reads.
    pub async fn refuse_forgotten(&self, member: &str) -> Result<(), error::ApiError> {
        let Some(key) = &self.config.member_key else {
            return Ok(());
        };
        let p = key.pseudonym(member);
        if self
            .store
            .forgotten(std::slice::from_ref(&p))
            .await?
            .is_empty()
        {
            Ok(())
        } else {
            Err(crate::store::Rejection::MemberForgotten.into())
        }
    }

    /// A member as log lines name it: a keyed hash, never the id.
    pub fn log_ref(&self, member: &str) -> String {
        crate::privacy::log_ref(self.config.member_key.as_ref(), member)
    }
}

/// The authenticated partner of a call, put in the request extensions by the identity layer.
/// Handlers take the caller only from here, never from a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPartner(pub String);
