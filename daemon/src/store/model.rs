//! What the store keeps and is asked: a partner's request and its operation, why one is refused,
//! a stored transaction, everything a batch writes, and the stored forms of a few values.

use super::error::StoreError;
use super::{holds, matrix, programme};
use crate::ledger::{Allocation, Debt, Kind, Lot, Micros, Receipt, Refusal};
use rust_decimal::Decimal;

/// A mutation a partner asked for, validated and priced by the API layer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The calling partner (from its certificate).
    pub partner: String,
    /// The partner's own transaction id.
    pub transaction_id: String,
    /// SHA-256 of the request's content, to tell a retry from a reuse of the id.
    pub hash: [u8; 32],
    /// What to do.
    pub op: Op,
}

/// The ledger operation of a [`Request`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Grant points.
    Earn {
        /// The member.
        member: String,
        /// Points to grant (already computed from the purchase or the bonus).
        points: i64,
        /// The purchase, if the points came from one: amount and currency.
        purchase: Option<(Decimal, String)>,
        /// The purchase category the till sent (campaign conditions).
        category: Option<String>,
    },
    /// Spend points at the caller (priced by the writer at the instant it accepts the burn).
    Burn {
        /// The member.
        member: String,
        /// Points to spend.
        points: i64,
    },
    /// Take back points of one of the caller's earns.
    ReverseEarn {
        /// The partner's id of the earn.
        original: String,
        /// Points to take back; 0 for all that is left.
        points: i64,
    },
    /// Give back points of one of the caller's burns.
    ReverseBurn {
        /// The partner's id of the burn.
        original: String,
        /// Points to give back; 0 for all that is left.
        points: i64,
    },
    /// Reserve points for the caller until `expires_at` (a hold at the till).
    Authorize {
        /// The member.
        member: String,
        /// Points to reserve.
        points: i64,
        /// How long the hold runs, in microseconds.
        hold_for: Micros,
    },
    /// Turn all or part of one of the caller's holds into a burn; the rest is released.
    Capture {
        /// The partner's id of the authorization.
        authorization: String,
        /// Points to burn; 0 for the whole hold.
        points: i64,
    },
    /// Release one of the caller's holds.
    Void {
        /// The partner's id of the authorization.
        authorization: String,
    },
}

/// Why a request was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The ledger refused (insufficient points, beyond what is left to reverse, …).
    #[error(transparent)]
    Ledger(#[from] Refusal),
    /// The member named was forgotten (`ForgetMember`): its id is never used again.
    #[error(
        "this member id was forgotten at the member's request; it cannot earn, spend or be read again"
    )]
    MemberForgotten,
    /// A reversal names a transaction the caller does not have.
    #[error("no transaction {0:?} of this partner")]
    UnknownTransaction(String),
    /// A reversal names a transaction of the wrong kind.
    #[error("transaction {id:?} is a {found:?}, not a {expected:?}")]
    WrongKind {
        /// The partner's id.
        id: String,
        /// What the reversal needs.
        expected: Kind,
        /// What the transaction is.
        found: Kind,
    },
    /// Nothing is left to reverse.
    #[error("transaction {0:?} is already fully reversed")]
    FullyReversed(String),
    /// The transaction id was already used for a request with other content.
    #[error("transaction id {0:?} was already used for a different request")]
    IdReused(String),
    /// No price version of the partner is in force (it cannot move money).
    #[error("partner {0:?} has no price in force")]
    Unpriced(String),
    /// The hold ran out before this capture: its points went back to the member.
    #[error("hold {id:?} ran out at {at}: its points went back to the member; authorize again")]
    HoldExpired {
        /// The partner's id of the authorization.
        id: String,
        /// RFC 3339.
        at: String,
    },
    /// The hold was already captured or voided by another call.
    #[error("hold {id:?} is already {state} (by transaction {by:?})")]
    HoldClosed {
        /// The partner's id of the authorization.
        id: String,
        /// `captured` or `voided`.
        state: &'static str,
        /// The partner's id of the call that closed it.
        by: String,
    },
    /// A capture asks for more than the hold reserved.
    #[error("hold {id:?} reserved {held} points, cannot capture {requested}")]
    BeyondHold {
        /// The partner's id of the authorization.
        id: String,
        /// Points held.
        held: i64,
        /// Points asked for.
        requested: i64,
    },
    /// The partner is retired: it no longer earns, burns or reverses.
    #[error(
        "partner {partner} retired at {since}: it can no longer earn, burn or reverse; its members' points and its settlements are unaffected"
    )]
    Retired {
        /// The partner.
        partner: String,
        /// RFC 3339.
        since: String,
    },
}

/// One stored transaction.
#[derive(Debug, Clone)]
pub struct TxnRecord {
    /// Ledger id.
    pub id: i64,
    /// The partner that made it.
    pub partner: String,
    /// The partner's own id.
    pub partner_txn_id: String,
    /// Kind.
    pub kind: Kind,
    /// The member.
    pub member: String,
    /// Points moved (positive).
    pub points: i64,
    /// Earns and burns: points reversed so far.
    pub reversed_points: i64,
    /// Earns: points reversed so far per part (the receipt's parts' order).
    pub parts_reversed: Vec<i64>,
    /// Reversals: the ledger id of the reversed transaction.
    pub original_id: Option<i64>,
    /// Earns from purchases: the amount (decimal string) and currency.
    pub purchase: Option<(String, String)>,
    /// Hash of the request content.
    pub request_hash: Vec<u8>,
    /// The first answer.
    pub receipt: Receipt,
    /// Acceptance instant.
    pub accepted_at: Micros,
}

/// Everything one batch changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Writes {
    /// The cycle every transaction and allocation of the batch belongs to.
    pub cycle: chrono::NaiveDate,
    /// New transactions.
    pub new_txns: Vec<TxnRecord>,
    /// Existing transactions whose reversed points changed: (id, reversed_points, per part as
    /// stored — `None` for a plain earn or a burn).
    pub reversed: Vec<(i64, i64, Option<String>)>,
    /// New or changed lots.
    pub lots: Vec<Lot>,
    /// New allocations.
    pub allocations: Vec<Allocation>,
    /// New or changed debts.
    pub debts: Vec<Debt>,
    /// Members seen for the first time, and members whose points left in open lots or kept
    /// activity changed.
    pub members: Vec<MemberRow>,
    /// Per (partner, kind) of the new transactions: (partner, kind, transactions, points), added
    /// to the cycle's totals.
    pub cycle_totals: Vec<(String, &'static str, i64, i64)>,
    /// The cells of the cycle's gross matrix the new allocations add to.
    pub matrix: matrix::Cells,
    /// Breakage undone by earn reversals that took swept points back (negative facts).
    pub breakage: Vec<BreakageFact>,
    /// The issuance fee each earn was charged and each earn reversal refunded.
    pub issuance: Vec<IssuanceRow>,
    /// Members' programme state and vouchers the batch changed.
    pub programme: programme::ProgrammeWrites,
    /// Holds the batch opened or closed.
    pub holds: holds::HoldWrites,
    /// Append the batch's link to the ledger's hash chain (`store::chain`); off only in the bench
    /// that measures what the chain costs.
    pub chain: bool,
    /// The batch's acceptance instant.
    pub at: Micros,
    /// The events of the batch's facts, appended to their partners' feeds in its transaction.
    pub events: Vec<crate::events::NewEvent>,
}

/// The issuance row of one earn (positive points) or earn reversal (negative points, refunded at
/// the fee its earn was charged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRow {
    /// The transaction.
    pub txn: i64,
    /// The issuing partner.
    pub issuer: String,
    /// Fee per point.
    pub fee_rate: Decimal,
    /// Points (negative for a reversal).
    pub points: i64,
}

/// One change of a lot's breakage in one cycle: a sweep (positive) or an earn reversal taking
/// swept points back (negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakageFact {
    /// The lot.
    pub lot: i64,
    /// Its member.
    pub member: String,
    /// Its issuer.
    pub issuer: String,
    /// Points (negative: breakage undone).
    pub points: i64,
    /// The earn reversal that undid it, if any.
    pub txn: Option<i64>,
}

/// An operator's override of a partner's quota and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerOverride {
    /// Partner id.
    pub partner: String,
    /// Requests per second.
    pub per_second: u32,
    /// Burst.
    pub burst: u32,
    /// Suspended.
    pub suspended: bool,
    /// When it was set.
    pub updated_at: Micros,
}

/// SQL of the overrides, shared by the backends.
pub mod overrides_sql {
    /// All overrides.
    pub const LIST: &str =
        "SELECT partner_id, per_second, burst, suspended, updated_at FROM partner_overrides";
    /// Insert or replace one.
    pub const SAVE: &str = "INSERT INTO partner_overrides (partner_id, per_second, burst, suspended, updated_at) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (partner_id) DO UPDATE SET per_second = excluded.per_second, \
        burst = excluded.burst, suspended = excluded.suspended, updated_at = excluded.updated_at";
}

/// The cycle a commit belongs to: the cycle of its instant, or the first one after the last sealed.
pub fn first_open_cycle(
    now_cycle: chrono::NaiveDate,
    sealed_through: Option<&str>,
) -> Result<chrono::NaiveDate, StoreError> {
    match parse_date("clearing_state.sealed_through", sealed_through)? {
        Some(sealed) if sealed >= now_cycle => coalition_clearing::next_day(sealed)
            .map_err(|e| StoreError::Corrupt(format!("clearing_state.sealed_through: {e}"))),
        _ => Ok(now_cycle),
    }
}

/// A stored business date; a value that is not one is corruption, never "nothing".
pub fn parse_date(column: &str, s: Option<&str>) -> Result<Option<chrono::NaiveDate>, StoreError> {
    s.map(|s| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("{column} holds {s:?}, not a date")))
    })
    .transpose()
}

/// Receipt slices as stored: `issuer:points;issuer:points` (partner ids hold neither `:` nor `;`).
pub fn encode_slices(slices: &[(String, i64)]) -> String {
    let parts: Vec<String> = slices.iter().map(|(i, p)| format!("{i}:{p}")).collect();
    parts.join(";")
}

/// An earn's points reversed per part as stored: nothing for a plain earn (or any other kind).
pub fn encode_parts_reversed(t: &TxnRecord) -> Option<String> {
    if t.kind != Kind::Earn || crate::ledger::Part::is_plain(&t.receipt.parts) {
        return None;
    }
    serde_json::to_string(&t.parts_reversed).ok()
}

/// Reads stored receipt slices back.
pub fn decode_slices(s: &str) -> Result<Vec<(String, i64)>, StoreError> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    s.split(';')
        .map(|part| {
            let (issuer, points) = part
                .split_once(':')
                .ok_or_else(|| StoreError::Corrupt(format!("bad slices {s:?}")))?;
            let points = points
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("bad slices {s:?}")))?;
            Ok((issuer.to_string(), points))
        })
        .collect()
}

/// A member row as a batch writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The member.
    pub member: String,
    /// Its first instant (used only when the row is new).
    pub first_seen: Micros,
    /// Points left in all its open lots.
    pub open_points: i64,
    /// Its kept activity.
    pub activity: crate::ledger::Activity,
}
