//! The events of a batch's facts, decided with them: a transaction's, a hold's, a completed
//! stamp card's, a voucher's and a tier change's. A retry decides nothing new, so it tells
//! nothing: only what the batch itself changed becomes an event.

use super::{Context, Key, key};
use crate::events::{EventType, NewEvent, Payload};
use crate::ledger::{HoldState, Kind, PartKind, Receipt};
use crate::store::holds::HoldRecord;
use crate::store::model::{Op, Request, TxnRecord};
use std::collections::{BTreeMap, HashMap};

/// A hold's event, as the hold stands now.
pub fn hold(event_type: EventType, h: &HoldRecord, balance_after: Option<i64>) -> NewEvent {
    NewEvent {
        partner: h.partner.clone(),
        event_type,
        member: Some(h.member.clone()),
        payload: Payload::Hold {
            hold: h.view(),
            ledger_id: h.id,
            balance_after,
            receipt: None,
        },
    }
}

/// The event of an authorization or a void the batch decided (none for a void of a hold that had
/// already run out: its expiry was the event).
pub fn of_hold_call(r: &Request, receipt: &Receipt) -> Option<NewEvent> {
    let view = receipt.hold.as_ref()?;
    let event_type = match (&r.op, view.state) {
        (Op::Authorize { .. }, HoldState::Held) => EventType::HoldAuthorized,
        (Op::Void { .. }, HoldState::Voided) => EventType::HoldVoided,
        _ => return None,
    };
    Some(NewEvent {
        partner: r.partner.clone(),
        event_type,
        member: Some(receipt.member_id.clone()),
        payload: Payload::Hold {
            hold: view.clone(),
            ledger_id: receipt.ledger_id,
            balance_after: Some(receipt.balance_after),
            receipt: None,
        },
    })
}

/// The events of a transaction the batch made: the transaction's own (a capture's: the hold's),
/// and for an earn whose stamp completed a card, the card's and its voucher's.
pub fn of_transaction(
    t: &TxnRecord,
    ctx: &Context,
    vouchers: &[crate::programme::Voucher],
) -> Vec<NewEvent> {
    let mut out = Vec::new();
    let member = Some(t.member.clone());
    match (&t.receipt.hold, t.kind) {
        (Some(view), Kind::Burn) => {
            let mut receipt = t.receipt.clone();
            receipt.hold = None;
            out.push(NewEvent {
                partner: t.partner.clone(),
                event_type: EventType::HoldCaptured,
                member: member.clone(),
                payload: Payload::Hold {
                    hold: view.clone(),
                    ledger_id: t.id,
                    balance_after: Some(t.receipt.balance_after),
                    receipt: Some(receipt),
                },
            });
        }
        _ => out.push(NewEvent {
            partner: t.partner.clone(),
            event_type: EventType::of_transaction(t.kind),
            member: member.clone(),
            payload: Payload::Transaction {
                receipt: t.receipt.clone(),
                purchase: t.purchase.clone(),
            },
        }),
    }
    if t.kind != Kind::Earn {
        return out;
    }
    let every = ctx
        .stamp_rules
        .get(&t.partner)
        .map_or(0, |rule| i64::from(rule.every));
    let stamp = |reward: String| NewEvent {
        partner: t.partner.clone(),
        event_type: EventType::StampCardCompleted,
        member: member.clone(),
        payload: Payload::StampCard {
            transaction_id: t.partner_txn_id.clone(),
            every,
            reward,
        },
    };
    if let Some(v) = vouchers.iter().find(|v| v.earn == t.id) {
        out.push(stamp(v.id.clone()));
        out.push(NewEvent {
            partner: v.partner.clone(),
            event_type: EventType::VoucherIssued,
            member: member.clone(),
            payload: Payload::Voucher {
                voucher_id: v.id.clone(),
                what: v.what.clone(),
                issued_at: v.issued_at,
                expires_at: v.expires_at,
                redeemed_at: None,
                redemption_id: None,
            },
        });
    } else if let Some(p) = t
        .receipt
        .parts
        .iter()
        .find(|p| p.kind == PartKind::Stamp && p.points > 0)
    {
        out.push(stamp(format!("{} points", p.points)));
    }
    out
}

/// The stored tier's name of a member's programme text (`t` is `[name, since, review]`), or the
/// ladder's first tier when none is stored.
fn tier_of(text: Option<&str>, first: &str) -> String {
    text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v.get("t")?.get(0)?.as_str().map(str::to_string))
        .unwrap_or_else(|| first.to_string())
}

/// A tier change of each member whose stored tier the batch changed (by an earn, a reversal or a
/// review due when it was loaded), one for each partner the member transacted with in the batch.
/// The caller keeps those whose marketing consent the partner holds.
pub fn tier_changes(
    stored: &HashMap<String, Option<String>>,
    states: &BTreeMap<String, Option<String>>,
    ctx: &Context,
    requests: &[Request],
    txns: &HashMap<Key, TxnRecord>,
) -> Vec<NewEvent> {
    let Some(ladder) = ctx.ladder.as_deref() else {
        return Vec::new();
    };
    let Some(first) = ladder.tiers.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (member, after) in states {
        let from = tier_of(
            stored.get(member).cloned().flatten().as_deref(),
            &first.name,
        );
        let to = tier_of(after.as_deref(), &first.name);
        if from == to {
            continue;
        }
        let mut told = std::collections::BTreeSet::new();
        for r in requests {
            let named = match &r.op {
                Op::Earn { member: m, .. }
                | Op::Burn { member: m, .. }
                | Op::Authorize { member: m, .. } => m == member,
                Op::ReverseEarn { original, .. } | Op::ReverseBurn { original, .. } => txns
                    .get(&key(&r.partner, original))
                    .is_some_and(|o| &o.member == member),
                _ => false,
            };
            // The partner's transaction of this batch, if the request made one.
            let made = txns
                .get(&key(&r.partner, &r.transaction_id))
                .is_some_and(|t| t.accepted_at == ctx.now);
            if named && made && told.insert(r.partner.clone()) {
                out.push(NewEvent {
                    partner: r.partner.clone(),
                    event_type: EventType::TierChanged,
                    member: Some(member.clone()),
                    payload: Payload::Tier {
                        from: from.clone(),
                        to: to.clone(),
                        transaction_id: r.transaction_id.clone(),
                    },
                });
            }
        }
    }
    out
}
