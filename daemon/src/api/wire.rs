//! A partner's calls on the wire: its write requests as ledger operations with their canonical
//! content (judged by today's rules), and receipts as answers. Shared by the single calls and
//! `IngestBatch`.

use crate::clock::rfc3339;
use crate::config::Partner;
use crate::ledger::{Kind, Receipt};
use crate::services::error::ServiceError;
use crate::services::validate;
use crate::store::Op;
use coalition_proto::v1 as pb;

/// An earn's fields judged by today's rules: the operation and its canonical content.
pub fn earn_op(
    currency: crate::config::Currency,
    partner: &Partner,
    r: &pb::EarnRequest,
) -> Result<(Op, String), ServiceError> {
    validate::id("transaction_id", &r.transaction_id)?;
    validate::id("member_id", &r.member_id)?;
    let (points, purchase, grant) = match &r.grant {
        Some(pb::earn_request::Grant::Purchase(m)) => {
            let amount = validate::money("purchase.amount", &m.amount, &m.currency, currency)?;
            let points = validate::purchase_points(amount, partner)?;
            (
                points,
                Some((amount, m.currency.clone())),
                format!("purchase:{}:{}", amount.normalize(), m.currency),
            )
        }
        Some(pb::earn_request::Grant::BonusPoints(p)) => {
            (validate::bonus(*p, partner)?, None, format!("bonus:{p}"))
        }
        None => {
            return Err(ServiceError::field(
                "grant",
                "MISSING_GRANT",
                "set either purchase or bonus_points",
            ));
        }
    };
    let category = validate::category(&r.category)?;
    let canonical = canonical_earn(&r.member_id, &grant, &r.category);
    let op = Op::Earn {
        member: r.member_id.clone(),
        points,
        purchase,
        category,
    };
    Ok((op, canonical))
}

/// A burn's operation and canonical content.
pub fn burn_op(r: &pb::BurnRequest) -> Result<(Op, String), ServiceError> {
    validate::id("transaction_id", &r.transaction_id)?;
    validate::id("member_id", &r.member_id)?;
    let points = validate::burn_points(r.points)?;
    let canonical = format!("burn\n{}\n{points}", r.member_id);
    let op = Op::Burn {
        member: r.member_id.clone(),
        points,
    };
    Ok((op, canonical))
}

/// An earn reversal's operation and canonical content.
pub fn reverse_earn_op(r: &pb::ReverseEarnRequest) -> Result<(Op, String), ServiceError> {
    validate::id("transaction_id", &r.transaction_id)?;
    validate::id("original_transaction_id", &r.original_transaction_id)?;
    let points = validate::reversal_points(r.points)?;
    let canonical = format!("reverse_earn\n{}\n{points}", r.original_transaction_id);
    let op = Op::ReverseEarn {
        original: r.original_transaction_id.clone(),
        points,
    };
    Ok((op, canonical))
}

/// A burn reversal's operation and canonical content.
pub fn reverse_burn_op(r: &pb::ReverseBurnRequest) -> Result<(Op, String), ServiceError> {
    validate::id("transaction_id", &r.transaction_id)?;
    validate::id("original_transaction_id", &r.original_transaction_id)?;
    let points = validate::reversal_points(r.points)?;
    let canonical = format!("reverse_burn\n{}\n{points}", r.original_transaction_id);
    let op = Op::ReverseBurn {
        original: r.original_transaction_id.clone(),
        points,
    };
    Ok((op, canonical))
}

/// An earn's canonical content from its fields as sent (no rule applied), to match a retry.
pub fn earn_canonical(r: &pb::EarnRequest) -> Option<String> {
    let grant = match &r.grant {
        Some(pb::earn_request::Grant::Purchase(m)) => {
            let amount: rust_decimal::Decimal = m.amount.trim().parse().ok()?;
            format!("purchase:{}:{}", amount.normalize(), m.currency)
        }
        Some(pb::earn_request::Grant::BonusPoints(p)) => format!("bonus:{p}"),
        None => return None,
    };
    Some(canonical_earn(&r.member_id, &grant, &r.category))
}

/// An earn's canonical content; the category joins it only when sent, so that earns stored
/// before categories existed still match their retries.
fn canonical_earn(member: &str, grant: &str, category: &str) -> String {
    if category.is_empty() {
        format!("earn\n{member}\n{grant}")
    } else {
        format!("earn\n{member}\n{grant}\ncategory:{category}")
    }
}

fn kind_to_pb(k: Kind) -> pb::TransactionKind {
    match k {
        Kind::Earn => pb::TransactionKind::Earn,
        Kind::Burn => pb::TransactionKind::Burn,
        Kind::ReverseEarn => pb::TransactionKind::ReverseEarn,
        Kind::ReverseBurn => pb::TransactionKind::ReverseBurn,
    }
}

/// An earn's parts on the wire, each funder named by its issuer id.
pub fn parts_to_pb(parts: &[crate::ledger::Part], partner: &str) -> Vec<pb::EarnPart> {
    parts
        .iter()
        .map(|p| pb::EarnPart {
            kind: p.kind.as_str().to_string(),
            source: p.source.clone(),
            funder: p.funder.issuer(partner).to_string(),
            points: p.points,
        })
        .collect()
}

/// A receipt on the wire (`partner`: the partner that made the transaction).
pub fn receipt_to_pb(r: &Receipt, partner: &str) -> pb::Receipt {
    pb::Receipt {
        transaction_id: r.transaction_id.clone(),
        ledger_id: r.ledger_id,
        kind: kind_to_pb(r.kind) as i32,
        member_id: r.member_id.clone(),
        points: r.points,
        balance_after: r.balance_after,
        accepted_at: rfc3339(r.accepted_at),
        slices: r
            .slices
            .iter()
            .map(|(issuer, points)| pb::IssuerSlice {
                issuer: issuer.clone(),
                points: *points,
            })
            .collect(),
        debt_created: r.debt_created,
        debt_repaid: r.debt_repaid,
        original_transaction_id: r.original_transaction_id.clone().unwrap_or_default(),
        parts: parts_to_pb(&r.parts, partner),
        tier: r.tier.clone().unwrap_or_default(),
    }
}

/// A voucher on the wire.
pub fn voucher_to_pb(v: &crate::programme::Voucher) -> pb::Voucher {
    pb::Voucher {
        voucher_id: v.id.clone(),
        partner: v.partner.clone(),
        what: v.what.clone(),
        issued_at: rfc3339(v.issued_at),
        expires_at: rfc3339(v.expires_at),
        redeemed_at: v.redeemed_at.map(rfc3339).unwrap_or_default(),
    }
}

/// A hold as a partner sees it.
pub fn hold_to_pb(v: &crate::ledger::HoldView, ledger_id: i64, member: &str) -> pb::Hold {
    use crate::ledger::HoldState;
    pb::Hold {
        authorization_id: v.authorization_id.clone(),
        ledger_id,
        member_id: member.to_string(),
        points: v.points,
        state: match v.state {
            HoldState::Held => pb::HoldState::Held,
            HoldState::Captured => pb::HoldState::Captured,
            HoldState::Voided => pb::HoldState::Voided,
            HoldState::Expired => pb::HoldState::Expired,
        } as i32,
        captured_points: v.captured,
        authorized_at: crate::clock::rfc3339(v.authorized_at),
        expires_at: crate::clock::rfc3339(v.expires_at),
        closed_by: v.closed_by.clone().unwrap_or_default(),
    }
}
