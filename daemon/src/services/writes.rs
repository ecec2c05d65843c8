//! A partner's writes as ledger requests: each submitted to the writer with the hash of its
//! canonical content (what tells a retry from another request under the same id), and a retry
//! matched by its id before today's rules judge it.

use super::error::ServiceError;
use super::shared::Shared;
use super::validate;
use crate::config::Partner;
use crate::ledger::Receipt;
use crate::store::{Op, Request};
use sha2::{Digest, Sha256};

/// The ledger request of `op`, by `partner` under its `transaction_id`.
pub fn request(partner: &str, transaction_id: &str, op: Op, canonical: &str) -> Request {
    Request {
        partner: partner.to_string(),
        transaction_id: transaction_id.to_string(),
        hash: Sha256::digest(canonical.as_bytes()).into(),
        op,
    }
}

/// A retry is matched by its id before its fields are judged by today's rules: if the
/// partner already has a transaction with this id and the same content, its stored receipt
/// is the answer even when today's config (a lower bonus cap, another currency) would refuse
/// the request. Called only when validation failed, so the common path reads nothing.
pub async fn replay(
    shared: &Shared,
    partner: &Partner,
    transaction_id: &str,
    canonical: Option<String>,
    refused: ServiceError,
) -> Result<Receipt, ServiceError> {
    let Some(canonical) = canonical else {
        return Err(refused);
    };
    if validate::id("transaction_id", transaction_id).is_err() {
        return Err(refused);
    }
    let hash: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    match shared
        .store
        .transaction(&partner.id, transaction_id)
        .await?
    {
        Some(t) if t.request_hash == hash => Ok(t.receipt),
        _ => Err(refused),
    }
}

/// Submits `op` and waits until its batch is durable: its receipt, or why it was refused.
pub async fn submit(
    shared: &Shared,
    partner: &Partner,
    transaction_id: &str,
    op: Op,
    canonical: String,
) -> Result<Receipt, ServiceError> {
    let request = request(&partner.id, transaction_id, op, &canonical);
    Ok(shared.writer.submit(request).await??)
}
