//! The lot ledger, pure: a member's lots and debts in, a decision out.
//!
//! Every rule of DOMAIN.md about points lives here once, for every backend: earn (paying debt off
//! first), burn (soonest expiry first), burn reversal (back to the very lots, latest slices first),
//! earn reversal (own lot, then other lots, then debt). Nothing here does I/O; the store loads a
//! [`MemberLedger`], calls these functions, and writes back what they marked dirty.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub mod holds;
pub mod parts;
#[cfg(test)]
mod tests;

pub use holds::{HeldSlice, HoldState, HoldView};
pub use parts::{Funder, Part, PartKind};

/// Unix time in microseconds, UTC. The daemon's one representation of an instant.
pub type Micros = i64;

/// The most points one transaction may move. With batches of at most 8,192 requests, no sum of
/// points in a batch can approach `i64::MAX` (8,192 × 10¹² < 10¹⁷).
pub const MAX_POINTS_PER_TRANSACTION: i64 = 1_000_000_000_000;

/// The points of one earn, remembering their issuer and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// Lot id: the id of the earn transaction that created it (one earn, one lot).
    pub id: i64,
    /// The member holding the points.
    pub member: String,
    /// The partner that issued the points (and owes for them when they are burned elsewhere).
    pub issuer: String,
    /// Points granted by the earn.
    pub points: i64,
    /// Points not yet burned, reversed or used to pay debt.
    pub points_left: i64,
    /// Points taken back from this lot by reversals of its own earn.
    pub reversed: i64,
    /// Points the expiry sweep booked as breakage, net of what reversals of the earn took back
    /// (the sum of the lot's breakage facts).
    pub expired: i64,
    /// When the earn was accepted.
    pub earned_at: Micros,
    /// The instant the lot stops counting; `None` never expires.
    pub expires_at: Option<Micros>,
    /// Changed in memory and not yet written (new or updated).
    pub dirty: bool,
}

impl Lot {
    /// Whether the lot still counts at `now` (a lot stops counting at its expiry instant).
    pub fn live(&self, now: Micros) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }

    /// The allocation order: soonest expiry first (never-expiring last), then oldest, then id.
    fn spend_order(&self) -> (bool, Micros, Micros, i64) {
        (
            self.expires_at.is_none(),
            self.expires_at.unwrap_or(i64::MAX),
            self.earned_at,
            self.id,
        )
    }
}

/// Points a member owes after an earn reversal it could not cover, owed to the reversing partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debt {
    /// The member who owes.
    pub member: String,
    /// The partner the member owes (the one that reversed the earn).
    pub owed_to: String,
    /// Points owed when the debt arose.
    pub points: i64,
    /// Points still owed.
    pub points_left: i64,
    /// Redemption rate of `owed_to` when the debt arose; repayments are priced at it.
    pub rate: Decimal,
    /// The reversal that created the debt (at most one debt per reversal: the debt's key).
    pub txn: i64,
    /// When the debt arose.
    pub created_at: Micros,
    /// Changed in memory and not yet written.
    pub dirty: bool,
}

/// One slice of points taken from one lot: a liability of the lot's issuer to the redeemer.
/// Negative points undo an earlier allocation (a burn reversal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The transaction that made it (burn, reversal, or an earn repaying debt).
    pub txn: i64,
    /// Its place among the allocations of `txn` (0, 1, …): (txn, seq) is the allocation's key.
    pub seq: i32,
    /// The lot the points came from (or went back to).
    pub lot: i64,
    /// The member.
    pub member: String,
    /// The lot's issuer: who owes.
    pub issuer: String,
    /// The partner the points were redeemed at: who is owed.
    pub redeemer: String,
    /// Points; negative for a reversal.
    pub points: i64,
    /// Money per point owed to the redeemer, the rate in force when the slice was first made.
    pub rate: Decimal,
    /// The allocation (txn, seq) this one undoes (burn reversals).
    pub reverses: Option<(i64, i32)>,
    /// When the transaction was accepted.
    pub accepted_at: Micros,
}

/// A burn allocation and how much of it is not yet reversed.
#[derive(Debug, Clone)]
pub struct Reversible {
    /// The original (positive) allocation.
    pub allocation: Allocation,
    /// Its points not yet given back.
    pub remaining: i64,
}

/// Why the ledger refuses a request. Nothing is changed when it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Points must be at least 1.
    #[error("points must be at least 1, got {0}")]
    NonPositive(i64),
    /// The member cannot cover the burn.
    #[error("member has {balance} points, cannot burn {requested}")]
    InsufficientPoints {
        /// Spendable balance now.
        balance: i64,
        /// Points asked for.
        requested: i64,
    },
    /// The result would not fit in the ledger's 64-bit point counters.
    #[error("{0} points would overflow the member's balance")]
    Overflow(i64),
    /// A reversal asks for more than is left to reverse.
    #[error("only {remaining} points are left to reverse, asked for {requested}")]
    BeyondRemaining {
        /// Points not yet reversed.
        remaining: i64,
        /// Points asked for.
        requested: i64,
    },
}

/// One member's ledger as loaded for a decision: the lots that can still change, and open debts.
#[derive(Debug, Clone, Default)]
pub struct MemberLedger {
    /// The member id.
    pub member: String,
    /// Whether the member exists in storage (has ever earned).
    pub known: bool,
    /// Lots with points left, plus any lot a reversal in this batch needs.
    pub lots: Vec<Lot>,
    /// Debts with points left.
    pub debts: Vec<Debt>,
    /// Points left in the member's open lots that were not loaded: all of them in lots that come
    /// after every loaded lot in spending order and still count (see [`prefix_covers`]), so a
    /// decision that needs no more than the loaded lots give is the same as with every lot loaded.
    pub unloaded: i64,
    /// The months the member was active in, as its row keeps them (programme reports).
    pub activity: Activity,
}

/// What a member's row keeps of its activity, so that programme reports read one row per member
/// instead of its transactions: the months with a transaction (by month of cycle) and the instant
/// of its second transaction. Written only when it changes: on a member's first transaction of a
/// month, and on its second ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// The latest month with a transaction (year × 12 + month − 1), 0 before the first.
    pub month: i64,
    /// Bit k set: a transaction in month `month − k` (k ≤ [`Activity::SPAN`]).
    pub mask: i64,
    /// When the member's first transaction was accepted (the earliest `accepted_at`).
    pub first_at: Option<Micros>,
    /// When the member's second transaction was accepted (the second earliest).
    pub second_at: Option<Micros>,
}

impl Activity {
    /// Months kept back from the latest (bit 62 is the last of a positive i64).
    pub const SPAN: i64 = 62;

    /// A transaction in `month` accepted at `at`. Every field is kept as a value that commutes
    /// (the latest month, a set of months, the two earliest instants), so the row comes out the
    /// same whichever of two daemons' batches commits first: a batch's `at` is taken before it
    /// waits for its members, so commit order is not acceptance order.
    pub fn record(&mut self, month: i64, at: Micros) {
        if self.mask == 0 {
            self.month = month;
            self.mask = 1;
        } else if month > self.month {
            let shift = month - self.month;
            self.mask = if shift > Self::SPAN {
                1
            } else {
                ((self.mask << shift) & i64::MAX) | 1
            };
            self.month = month;
        } else if self.month - month <= Self::SPAN {
            self.mask |= 1 << (self.month - month);
        }
        match self.first_at {
            None => self.first_at = Some(at),
            Some(first) if at < first => {
                self.second_at = Some(first);
                self.first_at = Some(at);
            }
            Some(_) => {
                if self.second_at.is_none_or(|second| at < second) {
                    self.second_at = Some(at);
                }
            }
        }
    }

    /// Whether the member had a transaction in `month` (as far back as the row keeps).
    pub fn active_in(&self, month: i64) -> bool {
        let k = self.month - month;
        self.mask != 0 && (0..=Self::SPAN).contains(&k) && (self.mask >> k) & 1 == 1
    }
}

/// How many of a member's open lots a batch reads first, in spending order, and then, for the
/// few members those do not decide, how many before reading all. Earns average tens of points
/// and most burns take fewer: four lots nearly always cover a batch's burns of one member.
pub const LOT_PREFIXES: [usize; 2] = [4, 64];

/// Whether the first `lots` of a member's open lots in spending order (at most `limit` were read)
/// are enough to decide a batch that takes at most `demand` points from them at `now`: either they
/// are all the open lots, or the last one still counts (so every lot after it does, and none of
/// them expired unseen) and the live points among them cover `demand`.
pub fn prefix_covers(lots: &[Lot], limit: usize, demand: i64, now: Micros) -> bool {
    if lots.len() < limit {
        return true;
    }
    let live: i64 = lots
        .iter()
        .filter(|l| l.live(now))
        .map(|l| l.points_left)
        .sum();
    lots.last().is_some_and(|l| l.live(now)) && live >= demand
}

/// The spending order as a sort key: soonest expiry first, never-expiring last, then oldest, then
/// id (the order the stores read lots in, `COALESCE(expires_at, i64::MAX), earned_at, id`).
pub fn spend_key(l: &Lot) -> (Micros, Micros, i64) {
    (l.expires_at.unwrap_or(i64::MAX), l.earned_at, l.id)
}

/// What an earn did.
#[derive(Debug, Clone)]
pub struct EarnEffect {
    /// The new lot's id.
    pub lot: i64,
    /// Allocations repaying debt from the new lot.
    pub repayments: Vec<Allocation>,
    /// Points of the earn that went to debt.
    pub debt_repaid: i64,
}

/// What an earn reversal did.
#[derive(Debug, Clone)]
pub struct ReverseEarnEffect {
    /// Points taken back from the earn's own lots (unspent points, live, expired or swept).
    pub from_own_lot: i64,
    /// Of those, points the sweep had booked as breakage: their breakage is undone.
    pub unswept: i64,
    /// Per funder, what its own lot gave back.
    pub own: Vec<OwnTake>,
    /// Shortfall taken from the member's other lots, redeemed at the reversing partner.
    pub allocations: Vec<Allocation>,
    /// Points the member could not cover and now owes.
    pub debt_created: i64,
}

/// Parameters of a new earn.
#[derive(Debug, Clone)]
pub struct NewEarn<'a> {
    /// The earn transaction id.
    pub txn: i64,
    /// The issuing partner.
    pub issuer: &'a str,
    /// Points granted.
    pub points: i64,
    /// Acceptance instant.
    pub now: Micros,
    /// When the lot expires (`None`: never).
    pub expires_at: Option<Micros>,
}

impl MemberLedger {
    /// A ledger for a member not seen before.
    pub fn new_member(member: &str) -> MemberLedger {
        MemberLedger {
            member: member.to_string(),
            known: false,
            lots: vec![],
            debts: vec![],
            unloaded: 0,
            activity: Activity::default(),
        }
    }

    /// Points left in lots that still count at `now`.
    pub fn live_points(&self, now: Micros) -> i64 {
        self.lots
            .iter()
            .filter(|l| l.live(now))
            .map(|l| l.points_left)
            .sum::<i64>()
            + self.unloaded
    }

    /// Points left in all the member's open lots, counting or not (what `members.open_points`
    /// keeps).
    pub fn open_points(&self) -> i64 {
        self.lots.iter().map(|l| l.points_left).sum::<i64>() + self.unloaded
    }

    /// Adds a lot read on its own (a reversal's or a hold's) unless it is loaded already; if it was
    /// among the unloaded ones, its points move out of `unloaded`.
    pub fn add_lot(&mut self, lot: Lot) {
        if self.lots.iter().any(|l| l.id == lot.id) {
            return;
        }
        self.unloaded -= lot.points_left;
        self.lots.push(lot);
    }

    /// Whether the loaded lots tell the next expiry at `now` and all the points expiring then: all
    /// lots are loaded, or the last loaded one expires later than (or never, unlike) the soonest
    /// live one.
    pub fn next_expiry_known(&self, now: Micros) -> bool {
        if self.unloaded == 0 {
            return true;
        }
        let next = self
            .lots
            .iter()
            .filter(|l| l.live(now) && l.points_left > 0)
            .filter_map(|l| l.expires_at)
            .min();
        match (next, self.lots.iter().max_by_key(|l| spend_key(l))) {
            (Some(n), Some(last)) => last.expires_at.is_none_or(|e| e > n),
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// Points owed.
    pub fn debt(&self) -> i64 {
        self.debts.iter().map(|d| d.points_left).sum()
    }

    /// The member's balance at `now`: points left in unexpired lots minus debt.
    pub fn balance(&self, now: Micros) -> i64 {
        self.live_points(now) - self.debt()
    }

    fn lot_mut(&mut self, id: i64) -> &mut Lot {
        self.lots
            .iter_mut()
            .find(|l| l.id == id)
            .expect("lot of an allocation must be loaded")
    }

    /// Indices of live lots with points left, in spending order.
    fn spendable_order(&self, now: Micros) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.lots.len())
            .filter(|&i| self.lots[i].live(now) && self.lots[i].points_left > 0)
            .collect();
        idx.sort_by_key(|&i| self.lots[i].spend_order());
        idx
    }

    /// Takes up to `points` from live lots, soonest expiry first, recording each slice as an
    /// allocation redeemed at `redeemer`. Returns the allocations and the points it could not find.
    fn take_from_lots(
        &mut self,
        txn: i64,
        redeemer: &str,
        rate: Decimal,
        mut points: i64,
        now: Micros,
        skip: &[i64],
    ) -> (Vec<Allocation>, i64) {
        let mut out = Vec::new();
        for i in self.spendable_order(now) {
            if points == 0 {
                break;
            }
            let lot = &mut self.lots[i];
            if skip.contains(&lot.id) {
                continue;
            }
            let k = lot.points_left.min(points);
            lot.points_left -= k;
            lot.dirty = true;
            points -= k;
            out.push(Allocation {
                txn,
                seq: out.len() as i32,
                lot: lot.id,
                member: lot.member.clone(),
                issuer: lot.issuer.clone(),
                redeemer: redeemer.to_string(),
                points: k,
                rate,
                reverses: None,
                accepted_at: now,
            });
        }
        (out, points)
    }

    /// Grants `e.points` in a new lot of `e.issuer` (see [`MemberLedger::earn_funded`]).
    pub fn earn(&mut self, e: NewEarn<'_>) -> Result<EarnEffect, Refusal> {
        self.earn_funded(e, 0)
    }

    /// Grants an earn of `e.points` funded by the partner `e.issuer` and `operator_points` funded
    /// by the operator: one lot per funder with points (the partner's has the earn's id, the
    /// operator's its negation). Open debts are paid off first (oldest debt first, the partner's
    /// lot before the operator's), each repayment an allocation redeemed at the one owed.
    pub fn earn_funded(
        &mut self,
        e: NewEarn<'_>,
        operator_points: i64,
    ) -> Result<EarnEffect, Refusal> {
        if e.points < 0 || operator_points < 0 {
            return Err(Refusal::NonPositive(e.points.min(operator_points)));
        }
        let points = e
            .points
            .checked_add(operator_points)
            .ok_or(Refusal::Overflow(e.points))?;
        if points < 1 {
            return Err(Refusal::NonPositive(points));
        }
        self.open_points()
            .checked_add(points)
            .ok_or(Refusal::Overflow(points))?;
        let mut repayments = Vec::new();
        let mut repaid = 0;
        self.debts.sort_by_key(|d| (d.created_at, d.txn));
        for (funder, p) in [
            (Funder::Partner, e.points),
            (Funder::Operator, operator_points),
        ] {
            if p == 0 {
                continue;
            }
            let mut lot = Lot {
                id: funder.lot_of(e.txn),
                member: self.member.clone(),
                issuer: funder.issuer(e.issuer).to_string(),
                points: p,
                points_left: p,
                reversed: 0,
                expired: 0,
                earned_at: e.now,
                expires_at: e.expires_at,
                dirty: true,
            };
            for debt in self.debts.iter_mut().filter(|d| d.points_left > 0) {
                if lot.points_left == 0 {
                    break;
                }
                let k = debt.points_left.min(lot.points_left);
                debt.points_left -= k;
                debt.dirty = true;
                lot.points_left -= k;
                repaid += k;
                repayments.push(Allocation {
                    txn: e.txn,
                    seq: repayments.len() as i32,
                    lot: lot.id,
                    member: self.member.clone(),
                    issuer: lot.issuer.clone(),
                    redeemer: debt.owed_to.clone(),
                    points: k,
                    rate: debt.rate,
                    reverses: None,
                    accepted_at: e.now,
                });
            }
            self.lots.push(lot);
        }
        self.known = true;
        Ok(EarnEffect {
            lot: e.txn,
            repayments,
            debt_repaid: repaid,
        })
    }

    /// Spends `points` at `redeemer`, soonest-expiring lots first. Refuses if the balance
    /// (unexpired points minus debt) cannot cover it.
    pub fn burn(
        &mut self,
        txn: i64,
        redeemer: &str,
        rate: Decimal,
        points: i64,
        now: Micros,
    ) -> Result<Vec<Allocation>, Refusal> {
        if points < 1 {
            return Err(Refusal::NonPositive(points));
        }
        let balance = self.balance(now);
        if balance < points {
            return Err(Refusal::InsufficientPoints {
                balance: balance.max(0),
                requested: points,
            });
        }
        let (allocations, short) = self.take_from_lots(txn, redeemer, rate, points, now, &[]);
        assert_eq!(short, 0, "balance check guarantees the lots cover the burn");
        Ok(allocations)
    }

    /// Gives `points` of a burn back to the lots they came from, latest slices first, each as a
    /// negative allocation at the rate of the slice it undoes. `slices` are the burn's allocations
    /// in the order they were made; their `remaining` is updated.
    pub fn reverse_burn(
        &mut self,
        txn: i64,
        slices: &mut [Reversible],
        points: i64,
        now: Micros,
    ) -> Result<Vec<Allocation>, Refusal> {
        if points < 1 {
            return Err(Refusal::NonPositive(points));
        }
        let remaining: i64 = slices.iter().map(|s| s.remaining).sum();
        if points > remaining {
            return Err(Refusal::BeyondRemaining {
                remaining,
                requested: points,
            });
        }
        let mut left = points;
        let mut out = Vec::new();
        for slice in slices.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let k = slice.remaining.min(left);
            if k == 0 {
                continue;
            }
            slice.remaining -= k;
            left -= k;
            let lot = self.lot_mut(slice.allocation.lot);
            lot.points_left += k;
            debug_assert!(lot.points_left + lot.reversed <= lot.points);
            lot.dirty = true;
            let a = &slice.allocation;
            out.push(Allocation {
                txn,
                seq: out.len() as i32,
                lot: a.lot,
                member: a.member.clone(),
                issuer: a.issuer.clone(),
                redeemer: a.redeemer.clone(),
                points: -k,
                rate: a.rate,
                reverses: Some((a.txn, a.seq)),
                accepted_at: now,
            });
        }
        Ok(out)
    }

    /// Takes `points` of the partner-funded earn `earn` back (see
    /// [`MemberLedger::reverse_earn_funded`]).
    #[allow(clippy::too_many_arguments)]
    pub fn reverse_earn(
        &mut self,
        txn: i64,
        earn: i64,
        reverser: &str,
        rate: Decimal,
        points: i64,
        remaining: i64,
        now: Micros,
    ) -> Result<ReverseEarnEffect, Refusal> {
        self.reverse_earn_funded(
            txn,
            earn,
            reverser,
            rate,
            &[(Funder::Partner, points)],
            remaining,
            now,
        )
    }

    /// Takes back, of earn `earn`, `shares` points per funder. For each funder, first what its lot
    /// still holds of them, expired or not (unswept points simply leave the lot; swept ones undo
    /// their breakage); then — only for points the member already spent — from the member's other
    /// lots soonest expiry first, as allocations redeemed at the funder (`reverser` for the
    /// partner's share, the operator for the operator's: the member gives back the value to
    /// whoever paid for it), at `rate`; whatever is still short becomes debt owed to the funder.
    /// `remaining` is how much of the earn is not yet reversed.
    #[allow(clippy::too_many_arguments)]
    pub fn reverse_earn_funded(
        &mut self,
        txn: i64,
        earn: i64,
        reverser: &str,
        rate: Decimal,
        shares: &[(Funder, i64)],
        remaining: i64,
        now: Micros,
    ) -> Result<ReverseEarnEffect, Refusal> {
        let points = shares
            .iter()
            .try_fold(0i64, |a, (_, p)| a.checked_add(*p))
            .ok_or(Refusal::Overflow(remaining))?;
        if points < 1 || shares.iter().any(|(_, p)| *p < 0) {
            return Err(Refusal::NonPositive(points));
        }
        if points > remaining {
            return Err(Refusal::BeyondRemaining {
                remaining,
                requested: points,
            });
        }
        let siblings = [Funder::Partner.lot_of(earn), Funder::Operator.lot_of(earn)];
        // Own lots first for every funder, so that no funder's shortfall takes a sibling's points.
        let mut own = Vec::new();
        for &(funder, share) in shares.iter().filter(|(_, p)| *p > 0) {
            let id = funder.lot_of(earn);
            // A funder with a share has a lot of at least that many points: the store loads it.
            let lot = self.lot_mut(id);
            let from_left = lot.points_left.min(share);
            let unswept = lot.expired.min(share - from_left);
            lot.points_left -= from_left;
            lot.expired -= unswept;
            lot.reversed += from_left + unswept;
            lot.dirty = true;
            own.push(OwnTake {
                funder,
                lot: id,
                from_own: from_left + unswept,
                unswept,
                short: share - from_left - unswept,
            });
        }
        let mut allocations = Vec::new();
        let mut debt_created = 0;
        for take in &own {
            if take.short == 0 {
                continue;
            }
            let creditor = take.funder.issuer(reverser).to_string();
            let (taken, short) =
                self.take_from_lots(txn, &creditor, rate, take.short, now, &siblings);
            allocations.extend(taken);
            // Debt only when no lot is left: never because a lot was not read (the batch reads
            // every lot of a member whose first ones cannot cover the reversal).
            assert!(
                short == 0 || self.unloaded == 0,
                "a reversal's shortfall is taken from every lot of the member before any debt"
            );
            if short > 0 {
                debt_created += short;
                self.debts.push(Debt {
                    member: self.member.clone(),
                    owed_to: creditor,
                    points: short,
                    points_left: short,
                    rate,
                    txn: take.funder.lot_of(txn),
                    created_at: now,
                    dirty: true,
                });
            }
        }
        for (i, a) in allocations.iter_mut().enumerate() {
            a.seq = i as i32;
        }
        Ok(ReverseEarnEffect {
            from_own_lot: own.iter().map(|t| t.from_own).sum(),
            unswept: own.iter().map(|t| t.unswept).sum(),
            own,
            allocations,
            debt_created,
        })
    }
}

/// What an earn reversal took from one funder's own lot.
#[derive(Debug, Clone)]
pub struct OwnTake {
    /// The funder.
    pub funder: Funder,
    /// Its lot.
    pub lot: i64,
    /// Points taken back from the lot (live, expired or swept).
    pub from_own: i64,
    /// Of those, points the sweep had booked as breakage.
    pub unswept: i64,
    /// Points of the funder's share the lot could not give back.
    pub short: i64,
}

/// Sums allocations by issuer, in first-seen order (what a receipt shows at the till).
pub fn by_issuer(allocations: &[Allocation]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for a in allocations {
        match out.iter_mut().find(|(i, _)| *i == a.issuer) {
            Some((_, p)) => *p += a.points.abs(),
            None => out.push((a.issuer.clone(), a.points.abs())),
        }
    }
    out
}

/// The kind of a ledger transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Points granted.
    Earn,
    /// Points spent.
    Burn,
    /// An earn taken back.
    ReverseEarn,
    /// A burn given back.
    ReverseBurn,
}

impl Kind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Earn => "earn",
            Kind::Burn => "burn",
            Kind::ReverseEarn => "reverse_earn",
            Kind::ReverseBurn => "reverse_burn",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "earn" => Kind::Earn,
            "burn" => Kind::Burn,
            "reverse_earn" => Kind::ReverseEarn,
            "reverse_burn" => Kind::ReverseBurn,
            _ => return None,
        })
    }
}

/// What a transaction did, as first answered; stored with it and returned unchanged on retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The partner's own transaction id.
    pub transaction_id: String,
    /// The ledger's id.
    pub ledger_id: i64,
    /// What kind of transaction.
    pub kind: Kind,
    /// The member.
    pub member_id: String,
    /// Points moved (positive).
    pub points: i64,
    /// The member's balance right after.
    pub balance_after: i64,
    /// Acceptance instant.
    pub accepted_at: Micros,
    /// Points by issuer (burns and reversals).
    pub slices: Vec<(String, i64)>,
    /// Debt created (earn reversals).
    pub debt_created: i64,
    /// Debt repaid (earns).
    pub debt_repaid: i64,
    /// The partner's id of the reversed transaction (reversals).
    pub original_transaction_id: Option<String>,
    /// Earns: the parts the points are made of, each with its funder. Earn reversals: what was
    /// taken back of each part. Empty for burns and burn reversals.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Earns, when the coalition runs tiers: the member's tier right after the earn.
    #[serde(default)]
    pub tier: Option<String>,
    /// Authorizations, captures and voids: the hold after the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldView>,
}
