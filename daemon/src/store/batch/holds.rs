//! Holds in the batch: authorizations and voids (captures are burns and are decided with them),
//! the lazy release of holds that ran out, and the first answers of retries.

use super::{Key, key};
use crate::ledger::{HoldState, HoldView, Kind, MemberLedger, Micros, Receipt, Refusal};
use crate::store::holds::HoldRecord;
use crate::store::{Op, Rejection, Request};
use std::collections::{BTreeSet, HashMap};

/// The holds one batch sees: those its requests name (by authorization id, or by the id of the
/// call that closed them) and those still held of its members.
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// By (partner, authorization id).
    pub by_key: HashMap<Key, HoldRecord>,
    /// (partner, id of the capture or void that closed it) → its authorization key.
    pub closed_by: HashMap<Key, Key>,
    /// Changed by the batch: written at its end.
    pub dirty: BTreeSet<Key>,
}

impl Holds {
    /// Takes in holds read after the members were locked.
    pub fn add(&mut self, holds: Vec<HoldRecord>) {
        for h in holds {
            let k = key(&h.partner, &h.partner_txn_id);
            if let Some(by) = &h.closed_by {
                self.closed_by.insert(key(&h.partner, by), k.clone());
            }
            self.by_key.entry(k).or_insert(h);
        }
    }

    /// Lot ids the still-held holds took points from (their lots must be loaded).
    pub fn held_lots(&self) -> Vec<i64> {
        self.by_key
            .values()
            .filter(|h| h.state == HoldState::Held)
            .flat_map(|h| h.slices.iter().map(|s| s.lot))
            .collect()
    }

    /// Releases every hold that ran out by `now`: its points go back to their lots. Returns the
    /// holds released.
    pub fn release_expired(
        &mut self,
        ledgers: &mut HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Vec<Key> {
        let mut released = Vec::new();
        let mut keys: Vec<&Key> = self
            .by_key
            .iter()
            .filter(|(_, h)| h.state == HoldState::Held && h.expires_at <= now)
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let keys: Vec<Key> = keys.into_iter().cloned().collect();
        for k in keys {
            let Some(h) = self.by_key.get_mut(&k) else {
                continue;
            };
            let Some(m) = ledgers.get_mut(&h.member) else {
                // Not loaded: released when a batch next loads the member.
                continue;
            };
            m.release(&h.slices);
            h.slices.clear();
            h.state = HoldState::Expired;
            h.closed_at = Some(h.expires_at);
            // Counted once its batch commits (from its `hold.expired` event), not here: a batch
            // run again after a lost race decides it again.
            self.dirty.insert(k.clone());
            released.push(k);
        }
        released
    }

    /// The answer to a request whose id the holds already know, if any: a retry gets its first
    /// answer, another request with a hold's id is refused.
    pub fn known(
        &self,
        r: &Request,
        ledgers: &HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Option<Result<Receipt, Rejection>> {
        let k = key(&r.partner, &r.transaction_id);
        let reused = || Err(Rejection::IdReused(r.transaction_id.clone()));
        if let Some(h) = self.by_key.get(&k) {
            return Some(match &r.op {
                Op::Authorize { .. } if h.request_hash == r.hash => Ok(authorized(h)),
                _ => reused(),
            });
        }
        let ak = self.closed_by.get(&k)?;
        let h = self.by_key.get(ak)?;
        Some(match &r.op {
            Op::Void { authorization }
                if h.state == HoldState::Voided && *ak == key(&r.partner, authorization) =>
            {
                Ok(voided(h, ledgers, now))
            }
            _ => reused(),
        })
    }

    /// Decides an authorization or a void (`None` for any other request).
    pub fn decide(
        &mut self,
        r: &Request,
        id: &mut dyn FnMut() -> i64,
        ledgers: &mut HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Option<Result<Receipt, Rejection>> {
        match &r.op {
            Op::Authorize {
                member,
                points,
                hold_for,
            } => Some(self.authorize(r, member, *points, *hold_for, id, ledgers, now)),
            Op::Void { authorization } => Some(self.void(r, authorization, ledgers, now)),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &mut self,
        r: &Request,
        member: &str,
        points: i64,
        hold_for: Micros,
        id: &mut dyn FnMut() -> i64,
        ledgers: &mut HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Result<Receipt, Rejection> {
        // An unknown member is refused exactly like a member with nothing: no member oracle.
        let m = ledgers.get_mut(member).ok_or(Refusal::InsufficientPoints {
            balance: 0,
            requested: points,
        })?;
        let slices = m.hold(points, now)?;
        let h = HoldRecord {
            id: id(),
            partner: r.partner.clone(),
            partner_txn_id: r.transaction_id.clone(),
            member: member.to_string(),
            points,
            request_hash: r.hash.to_vec(),
            balance_after: m.balance(now),
            authorized_at: now,
            expires_at: now.saturating_add(hold_for),
            state: HoldState::Held,
            captured: 0,
            capture_id: None,
            closed_by: None,
            closed_at: None,
            slices,
        };
        let answer = authorized(&h);
        metrics::counter!("coalition_holds_total", "event" => "opened").increment(1);
        let k = key(&r.partner, &r.transaction_id);
        self.by_key.insert(k.clone(), h);
        self.dirty.insert(k);
        Ok(answer)
    }

    fn void(
        &mut self,
        r: &Request,
        authorization: &str,
        ledgers: &mut HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Result<Receipt, Rejection> {
        let ak = key(&r.partner, authorization);
        let h = self
            .by_key
            .get_mut(&ak)
            .ok_or_else(|| Rejection::UnknownTransaction(authorization.to_string()))?;
        match h.state {
            HoldState::Held => {}
            // Ran out: its points are back already; the void has nothing left to do.
            HoldState::Expired => return Ok(voided(h, ledgers, now)),
            HoldState::Captured | HoldState::Voided => {
                return Err(closed(h, authorization));
            }
        }
        let m = ledgers
            .get_mut(&h.member)
            .ok_or_else(|| Rejection::UnknownTransaction(authorization.to_string()))?;
        m.release(&h.slices);
        h.slices.clear();
        h.state = HoldState::Voided;
        h.closed_by = Some(r.transaction_id.clone());
        h.closed_at = Some(now);
        let answer = voided(h, ledgers, now);
        metrics::counter!("coalition_holds_total", "event" => "voided").increment(1);
        self.closed_by
            .insert(key(&r.partner, &r.transaction_id), ak.clone());
        self.dirty.insert(ak);
        Ok(answer)
    }

    /// Captures `points` (0: all) of the caller's hold `authorization` as the burn `id` (see
    /// [`MemberLedger::capture`]); the rest goes back.
    #[allow(clippy::too_many_arguments)]
    pub fn capture(
        &mut self,
        r: &Request,
        authorization: &str,
        points: i64,
        rate: rust_decimal::Decimal,
        id: &mut dyn FnMut() -> i64,
        ledgers: &mut HashMap<String, MemberLedger>,
        now: Micros,
    ) -> Result<Captured, Rejection> {
        let ak = key(&r.partner, authorization);
        let h = self
            .by_key
            .get_mut(&ak)
            .ok_or_else(|| Rejection::UnknownTransaction(authorization.to_string()))?;
        match h.state {
            HoldState::Held if h.expires_at > now => {}
            HoldState::Held | HoldState::Expired => {
                return Err(Rejection::HoldExpired {
                    id: authorization.to_string(),
                    at: crate::clock::rfc3339(h.expires_at),
                });
            }
            HoldState::Captured | HoldState::Voided => {
                return Err(closed(h, authorization));
            }
        }
        let points = if points == 0 { h.points } else { points };
        if points > h.points {
            return Err(Rejection::BeyondHold {
                id: authorization.to_string(),
                held: h.points,
                requested: points,
            });
        }
        let m = ledgers
            .get_mut(&h.member)
            .ok_or_else(|| Rejection::UnknownTransaction(authorization.to_string()))?;
        let txn = id();
        let allocations = m.capture(txn, &r.partner, rate, &h.slices, points, now);
        h.slices.clear();
        h.state = HoldState::Captured;
        h.captured = points;
        h.capture_id = Some(txn);
        h.closed_by = Some(r.transaction_id.clone());
        h.closed_at = Some(now);
        let view = h.view();
        let member = h.member.clone();
        metrics::counter!("coalition_holds_total", "event" => "captured").increment(1);
        self.closed_by
            .insert(key(&r.partner, &r.transaction_id), ak.clone());
        self.dirty.insert(ak);
        Ok(Captured {
            txn,
            member,
            points,
            allocations,
            view,
        })
    }
}

/// Why a capture or void of a hold closed by another call is refused.
fn closed(h: &HoldRecord, authorization: &str) -> Rejection {
    Rejection::HoldClosed {
        id: authorization.to_string(),
        state: h.state.as_str(),
        by: h.closed_by.clone().unwrap_or_default(),
    }
}

/// What a capture did.
pub(super) struct Captured {
    /// The burn's ledger id.
    pub txn: i64,
    /// The member.
    pub member: String,
    /// Points burned.
    pub points: i64,
    /// The burn's allocations.
    pub allocations: Vec<crate::ledger::Allocation>,
    /// The hold after.
    pub view: HoldView,
}

/// The first answer of an authorization: the hold as it was made.
fn authorized(h: &HoldRecord) -> Receipt {
    let mut view = h.view();
    view.state = HoldState::Held;
    view.captured = 0;
    view.closed_by = None;
    receipt(h, h.balance_after, h.authorized_at, view)
}

/// The answer of a void: the hold as it stands, the member's balance now.
fn voided(h: &HoldRecord, ledgers: &HashMap<String, MemberLedger>, now: Micros) -> Receipt {
    let balance = ledgers.get(&h.member).map_or(0, |m| m.balance(now));
    receipt(h, balance, h.closed_at.unwrap_or(now), h.view())
}

fn receipt(h: &HoldRecord, balance_after: i64, at: Micros, view: HoldView) -> Receipt {
    Receipt {
        transaction_id: view
            .closed_by
            .clone()
            .filter(|_| view.state == HoldState::Voided)
            .unwrap_or_else(|| h.partner_txn_id.clone()),
        ledger_id: h.id,
        // A hold is not a transaction of the ledger; its receipt carries the hold.
        kind: Kind::Burn,
        member_id: h.member.clone(),
        points: h.points,
        balance_after,
        accepted_at: at,
        slices: vec![],
        debt_created: 0,
        debt_repaid: 0,
        original_transaction_id: None,
        parts: vec![],
        tier: None,
        hold: Some(view),
    }
}
