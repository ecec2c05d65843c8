//! A partner's events on the wire: `WatchEvents` (the feed's events as `PartnerEvent`s on a
//! stream) and the body a webhook posts (the same message in the proto3 JSON mapping).

use super::wire::{hold_to_pb, receipt_to_pb};
use crate::clock::rfc3339;
use crate::events::{Event, Payload};
use crate::services::error::ServiceError;
use crate::services::feed;
use crate::services::shared::Shared;
use coalition_proto::v1 as pb;
use std::pin::Pin;
use tonic::Status;

/// The events of one `WatchEvents` stream.
pub type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::PartnerEvent, Status>> + Send + 'static>>;

/// How many events wait between the feed and a slow reader before the feed waits for it.
const BUFFER: usize = 256;

/// An event on the wire.
pub fn event_pb(e: &Event) -> pb::PartnerEvent {
    use pb::partner_event::Payload as P;
    let member = e.member.clone().unwrap_or_default();
    let payload = match &e.payload {
        Payload::Transaction { receipt, purchase } => P::Transaction(pb::TransactionEvent {
            receipt: Some(receipt_to_pb(receipt, &e.partner)),
            purchase: purchase.as_ref().map(|(amount, currency)| pb::Money {
                amount: amount.clone(),
                currency: currency.clone(),
            }),
        }),
        Payload::Hold {
            hold,
            ledger_id,
            balance_after,
            receipt,
        } => P::Hold(pb::HoldEvent {
            hold: Some(hold_to_pb(hold, *ledger_id, &member)),
            balance_after: balance_after.unwrap_or_default(),
            receipt: receipt.as_ref().map(|r| receipt_to_pb(r, &e.partner)),
        }),
        Payload::Voucher {
            voucher_id,
            what,
            issued_at,
            expires_at,
            redeemed_at,
            redemption_id,
        } => P::Voucher(pb::VoucherEvent {
            voucher: Some(pb::Voucher {
                voucher_id: voucher_id.clone(),
                partner: e.partner.clone(),
                what: what.clone(),
                issued_at: rfc3339(*issued_at),
                expires_at: rfc3339(*expires_at),
                redeemed_at: redeemed_at.map(rfc3339).unwrap_or_default(),
            }),
            redemption_id: redemption_id.clone().unwrap_or_default(),
        }),
        Payload::StampCard {
            transaction_id,
            every,
            reward,
        } => P::StampCard(pb::StampCardEvent {
            transaction_id: transaction_id.clone(),
            every: *every,
            reward: reward.clone(),
        }),
        Payload::Tier {
            from,
            to,
            transaction_id,
        } => P::Tier(pb::TierEvent {
            from_tier: from.clone(),
            to_tier: to.clone(),
            transaction_id: transaction_id.clone(),
        }),
        Payload::Settlement {
            cycle,
            digest,
            net,
            reason,
        } => P::Settlement(pb::SettlementEvent {
            cycle: cycle.clone(),
            digest: digest.clone(),
            net: net.clone(),
            reason: reason.clone(),
        }),
        Payload::Break {
            cycle,
            break_id,
            kind,
            transaction_id,
            note,
        } => P::ReconciliationBreak(pb::BreakEvent {
            cycle: cycle.clone(),
            break_id: *break_id,
            kind: kind.clone(),
            transaction_id: transaction_id.clone(),
            note: note.clone(),
        }),
    };
    pb::PartnerEvent {
        event_id: e.id(),
        sequence: e.seq,
        occurred_at: rfc3339(e.at),
        r#type: e.event_type.as_str().to_string(),
        member_id: member,
        payload: Some(payload),
    }
}

/// The body a webhook posts: the event's message in the proto3 JSON mapping.
pub fn json(e: &Event) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&event_pb(e)).map_err(|err| format!("event {}: {err}", e.id()))
}

/// Serves one `WatchEvents` stream of `partner`: the cursor and the filter checked first (a bad
/// one is the call's status), then the feed from there, live.
pub async fn watch(
    shared: &Shared,
    partner: &str,
    r: &pb::WatchEventsRequest,
) -> Result<EventStream, ServiceError> {
    let types = feed::types(&r.types)?;
    let from = feed::start(shared, partner, r.from_sequence).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
    tokio::spawn(feed::follow(
        shared.clone(),
        partner.to_string(),
        from,
        types,
        tx,
    ));
    use futures::StreamExt;
    Ok(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|item| item.map(|e| event_pb(&e)).map_err(Status::from)),
    ))
}
