//! A partner's events: what happened that concerns it, in the domain's words. Each is written in
//! the same transaction as its fact (the store's outbox: an event exists if and only if its fact
//! committed), numbered per partner from 1 without gaps, and read by `WatchEvents` and the
//! webhooks, which render it in the API's words.

use crate::ledger::{HoldView, Micros, Receipt};
use serde::{Deserialize, Serialize};

/// What happened, by the name a partner filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// One of its earns.
    Earned,
    /// One of its burns.
    Burned,
    /// One of its earn reversals.
    EarnReversed,
    /// One of its burn reversals.
    BurnReversed,
    /// A hold it authorized.
    HoldAuthorized,
    /// A hold of its captured (its receipt: the burn).
    HoldCaptured,
    /// A hold of its voided.
    HoldVoided,
    /// A hold of its ran out and gave its points back.
    HoldExpired,
    /// A voucher redeemable at it was issued (a stamp card at it completed).
    VoucherIssued,
    /// A voucher was redeemed at it.
    VoucherRedeemed,
    /// A member's stamp card at it completed.
    StampCardCompleted,
    /// The tier of a member who transacted at it changed (only members whose marketing consent
    /// it holds).
    TierChanged,
    /// Its statement of a cycle is ready (the cycle was cleared: a draft settlement).
    StatementReady,
    /// The settlement of a cycle it took part in was finalized.
    SettlementFinalized,
    /// It acknowledged a final settlement.
    SettlementAcknowledged,
    /// It disputed a final settlement.
    SettlementDisputed,
    /// Reconciliation found a break between its records and the ledger's.
    BreakFound,
    /// Finance resolved one of its reconciliation breaks.
    BreakResolved,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 18] = [
        EventType::Earned,
        EventType::Burned,
        EventType::EarnReversed,
        EventType::BurnReversed,
        EventType::HoldAuthorized,
        EventType::HoldCaptured,
        EventType::HoldVoided,
        EventType::HoldExpired,
        EventType::VoucherIssued,
        EventType::VoucherRedeemed,
        EventType::StampCardCompleted,
        EventType::TierChanged,
        EventType::StatementReady,
        EventType::SettlementFinalized,
        EventType::SettlementAcknowledged,
        EventType::SettlementDisputed,
        EventType::BreakFound,
        EventType::BreakResolved,
    ];

    /// Its name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Earned => "transaction.earned",
            EventType::Burned => "transaction.burned",
            EventType::EarnReversed => "transaction.earn_reversed",
            EventType::BurnReversed => "transaction.burn_reversed",
            EventType::HoldAuthorized => "hold.authorized",
            EventType::HoldCaptured => "hold.captured",
            EventType::HoldVoided => "hold.voided",
            EventType::HoldExpired => "hold.expired",
            EventType::VoucherIssued => "voucher.issued",
            EventType::VoucherRedeemed => "voucher.redeemed",
            EventType::StampCardCompleted => "stamp_card.completed",
            EventType::TierChanged => "member.tier_changed",
            EventType::StatementReady => "statement.ready",
            EventType::SettlementFinalized => "settlement.finalized",
            EventType::SettlementAcknowledged => "settlement.acknowledged",
            EventType::SettlementDisputed => "settlement.disputed",
            EventType::BreakFound => "reconciliation.break_found",
            EventType::BreakResolved => "reconciliation.break_resolved",
        }
    }

    /// The type of a name, if it is one.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event type of a transaction of this kind.
    pub fn of_transaction(kind: crate::ledger::Kind) -> EventType {
        use crate::ledger::Kind;
        match kind {
            Kind::Earn => EventType::Earned,
            Kind::Burn => EventType::Burned,
            Kind::ReverseEarn => EventType::EarnReversed,
            Kind::ReverseBurn => EventType::BurnReversed,
        }
    }
}

/// What an event says. The member it names is kept beside it ([`NewEvent::member`]), never in
/// here, so that forgetting a member pseudonymises its events as it does the rest of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Payload {
    /// An earn, burn or reversal: its receipt as first answered, and the purchase of an earn.
    Transaction {
        /// The receipt (its member id left empty).
        receipt: Receipt,
        /// Amount and currency of the purchase.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        purchase: Option<(String, String)>,
    },
    /// A hold: as it stands after the fact, with the capture's receipt.
    Hold {
        /// The hold.
        hold: HoldView,
        /// Its ledger id.
        ledger_id: i64,
        /// The member's available balance after the fact, when the call answered it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        balance_after: Option<i64>,
        /// A capture's burn (its member id left empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<Receipt>,
    },
    /// A voucher redeemable only at its partner.
    Voucher {
        /// Its id.
        voucher_id: String,
        /// What it is worth.
        what: String,
        /// When it was issued.
        issued_at: Micros,
        /// Valid until (exclusive).
        expires_at: Micros,
        /// When it was redeemed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redeemed_at: Option<Micros>,
        /// The partner's id of the redemption.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redemption_id: Option<String>,
    },
    /// A stamp card completed by an earn.
    StampCard {
        /// The partner's id of the earn whose stamp completed it.
        transaction_id: String,
        /// Stamps of a full card.
        every: i64,
        /// Its reward: points (`"50 points"`) or a voucher's id.
        reward: String,
    },
    /// A member's tier changed.
    Tier {
        /// The tier before.
        from: String,
        /// The tier now.
        to: String,
        /// The partner's id of its transaction that came with the change.
        transaction_id: String,
    },
    /// A settlement of a cycle, as it concerns the partner.
    Settlement {
        /// The cycle, `YYYY-MM-DD`.
        cycle: String,
        /// The settlement's digest (of its content).
        digest: String,
        /// The partner's net position (positive: it is paid).
        net: String,
        /// A dispute's reason, an acknowledgement's note.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// A reconciliation break.
    Break {
        /// The cycle, `YYYY-MM-DD`.
        cycle: String,
        /// The break's number in the partner's reconciliation.
        break_id: i64,
        /// What kind of break (`missing_in_ledger`, `missing_in_file`, `different`, …).
        kind: String,
        /// The transaction it is about.
        transaction_id: String,
        /// Finance's note, once resolved.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        note: String,
    },
}

impl Payload {
    /// The payload as stored: the member ids of receipts left out (they live beside it).
    pub fn without_member(mut self) -> Payload {
        match &mut self {
            Payload::Transaction { receipt, .. } => receipt.member_id.clear(),
            Payload::Hold {
                receipt: Some(r), ..
            } => r.member_id.clear(),
            _ => {}
        }
        self
    }

    /// The payload as read: the member ids of receipts put back.
    pub fn with_member(mut self, member: &str) -> Payload {
        match &mut self {
            Payload::Transaction { receipt, .. } => receipt.member_id = member.to_string(),
            Payload::Hold {
                receipt: Some(r), ..
            } => r.member_id = member.to_string(),
            _ => {}
        }
        self
    }
}

/// An event to append to a partner's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Whose feed.
    pub partner: String,
    /// What happened.
    pub event_type: EventType,
    /// The member it names, as the partner knows it.
    pub member: Option<String>,
    /// What it says.
    pub payload: Payload,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Whose feed.
    pub partner: String,
    /// Its number in the partner's feed: 1, 2, 3, … without gaps.
    pub seq: i64,
    /// What happened.
    pub event_type: EventType,
    /// When its fact committed (the acceptance instant of its batch).
    pub at: Micros,
    /// The member it names (a pseudonym once the member was forgotten).
    pub member: Option<String>,
    /// What it says (with its member ids put back).
    pub payload: Payload,
}

impl Event {
    /// Its stable id: the same on every daemon and every delivery.
    pub fn id(&self) -> String {
        format!("evt_{}_{}", self.partner, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_reads_back_from_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("transaction.exploded"), None);
        let names: std::collections::BTreeSet<_> =
            EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), EventType::ALL.len());
    }
}
