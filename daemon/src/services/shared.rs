//! What every service shares: the configuration, the store (reads) and the writer (mutations),
//! the clock, the live limits, the price book and the health signals.

use super::error::ServiceError;
use crate::clock::Clock;
use crate::config::Config;
use crate::store::writer::Writer;
use crate::store::{Rejection, Store};
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
    /// Price versions (re-read every few seconds).
    pub prices: Arc<crate::prices::PriceBook>,
    /// What the writer and the scheduler report for health (`server::health`).
    pub health: Arc<crate::signals::Signals>,
}

impl Shared {
    /// Refuses a call naming a forgotten member (`MEMBER_FORGOTTEN`). Writes are checked again
    /// inside their batch, after the member is locked; this is for reads.
    pub async fn refuse_forgotten(&self, member: &str) -> Result<(), ServiceError> {
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
            Err(Rejection::MemberForgotten.into())
        }
    }

    /// A member as log lines name it: a keyed hash, never the id.
    pub fn log_ref(&self, member: &str) -> String {
        crate::privacy::log_ref(self.config.member_key.as_ref(), member)
    }
}

/// What reloads the server's certificates and CRL (the operator's `ReloadCertificates`): the
/// server's TLS state, handed to the operator service as this trait, so that services need not
/// know the server.
pub trait CertificateReload: Send + Sync {
    /// Loads the configured files again: how many serials the CRL revokes, or why the previous
    /// configuration stays in force.
    fn reload_certificates(&self) -> Result<usize, String>;
}
