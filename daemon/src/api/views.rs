//! What each role sees of a member: one place, so that no handler decides it on its own.
//!
//! | field | partner | finance, operator |
//! | --- | --- | --- |
//! | balance, debt, next expiry and its points | yes | yes |
//! | split by issuer, number of lots | no (empty / 0) | yes |
//!
//! A member the ledger does not know reads like a member with nothing, for every role: ids cannot
//! be probed one after another.

use crate::clock::rfc3339;
use crate::ledger::{MemberLedger, Micros};
use coalition_proto::v1 as pb;

/// Who is looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A partner: what the till needs, nothing about other partners.
    Partner,
    /// Finance or an operator (their reads are logged in the access log).
    Staff,
}

/// A member's balance as `audience` may see it (`None`: a member the ledger does not know).
pub fn balance(
    member_id: &str,
    m: Option<&MemberLedger>,
    now: Micros,
    audience: Audience,
    (held, released): (i64, i64),
) -> pb::Balance {
    let Some(m) = m else {
        return pb::Balance {
            member_id: member_id.to_string(),
            ..Default::default()
        };
    };
    let live: Vec<_> = m
        .lots
        .iter()
        .filter(|l| l.live(now) && l.points_left > 0)
        .collect();
    let next = live.iter().filter_map(|l| l.expires_at).min();
    let next_points = next.map_or(0, |e| {
        live.iter()
            .filter(|l| l.expires_at == Some(e))
            .map(|l| l.points_left)
            .sum()
    });
    // Holds that ran out are released when a batch next sees the member; their points count now.
    let available = m.balance(now).saturating_add(released);
    let mut b = pb::Balance {
        member_id: m.member.clone(),
        points: available,
        held_points: held,
        available_points: available,
        debt: m.debt(),
        by_issuer: vec![],
        next_expiry: next.map(rfc3339).unwrap_or_default(),
        next_expiry_points: next_points,
        lots: 0,
    };
    if audience == Audience::Staff {
        for l in &live {
            match b.by_issuer.iter_mut().find(|s| s.issuer == l.issuer) {
                Some(s) => s.points += l.points_left,
                None => b.by_issuer.push(pb::IssuerSlice {
                    issuer: l.issuer.clone(),
                    points: l.points_left,
                }),
            }
        }
        b.by_issuer.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        b.lots = live.len() as i64;
    }
    b
}

/// Writes a finance or operator read of a member's data to the access log, before anything is
/// shown: if the log cannot be written, nothing is.
pub async fn log_staff_read(
    shared: &crate::services::shared::Shared,
    caller: Option<&coalition_certs::Identity>,
    r: &pb::MemberBalanceRequest,
    action: &str,
) -> Result<(), crate::services::error::ServiceError> {
    use crate::services::error::ServiceError;
    let caller =
        caller.ok_or_else(|| ServiceError::Unauthenticated("no identity on this call".into()))?;
    crate::services::validate::id("member_id", &r.member_id)?;
    shared.refuse_forgotten(&r.member_id).await?;
    if r.reason.chars().count() > 500 {
        return Err(ServiceError::field(
            "reason",
            "REASON_TOO_LONG",
            "use at most 500 characters",
        ));
    }
    shared
        .store
        .log_access(&crate::store::access::AccessEntry {
            at: shared.clock.now(),
            role: caller.role.as_str().to_string(),
            who: caller.name.clone(),
            member: r.member_id.clone(),
            action: action.into(),
            reason: r.reason.clone(),
        })
        .await?;
    Ok(())
}

/// A finance or operator read of a member's balance: logged, then the full view.
pub async fn staff_balance(
    shared: &crate::services::shared::Shared,
    caller: Option<&coalition_certs::Identity>,
    r: &pb::MemberBalanceRequest,
) -> Result<pb::Balance, crate::services::error::ServiceError> {
    log_staff_read(shared, caller, r, "GetMemberBalance").await?;
    let m = shared.store.member(&r.member_id).await?;
    let now = shared.clock.now();
    let held = held(shared, &r.member_id, now).await?;
    Ok(balance(
        &r.member_id,
        m.as_ref(),
        now,
        Audience::Staff,
        held,
    ))
}

/// What `member` has held at `now`: (points of running holds, points of holds that ran out and go
/// back to live lots).
pub async fn held(
    shared: &crate::services::shared::Shared,
    member: &str,
    now: Micros,
) -> Result<(i64, i64), crate::services::error::ServiceError> {
    use crate::store::holds::{HoldsCall, HoldsReply};
    let call = HoldsCall::Of {
        member: member.to_string(),
        now,
    };
    match shared.store.holds(call).await? {
        HoldsReply::Of(held, released) => Ok((held, released)),
        _ => Err(crate::services::error::ServiceError::mismatched()),
    }
}
