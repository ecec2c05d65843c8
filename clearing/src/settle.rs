//! The settlement of one cycle: gross matrix, netting, rounding, payments, control totals, digest.

use chrono::NaiveDate;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The participant id of the coalition operator (who receives issuance fees).
pub const OPERATOR: &str = "operator";

/// One allocation of the cycle: `points` of a lot of `issuer` redeemed at `redeemer`, at `rate`
/// money per point. Negative points undo an earlier allocation (a reversal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Who owes (the lot's issuer).
    pub issuer: String,
    /// Who is owed (where the points were redeemed).
    pub redeemer: String,
    /// Points (negative: a reversal).
    pub points: i64,
    /// Money per point, as priced when the allocation was first made.
    pub rate: Decimal,
    /// How many allocations this line stands for: 1, or more when the store has summed the
    /// points of allocations with the same issuer, redeemer and rate (the value is the same).
    pub allocations: i64,
}

/// Points a partner issued in the cycle at one issuance fee per point, owed to the operator: each
/// earn is charged the fee in force when it was accepted, and its reversal refunds that same fee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    /// The issuing partner.
    pub issuer: String,
    /// Points issued at this fee net of their earns' reversals in the cycle (may be negative).
    pub points: i64,
    /// Fee per point.
    pub fee_rate: Decimal,
    /// points × fee_rate, exact (filled in by [`settle`]).
    #[serde(default)]
    pub value: Decimal,
}

/// How net positions are rounded to minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Half away from zero (the spreadsheets' rounding): the default.
    #[default]
    HalfAwayFromZero,
    /// Half to even (banker's rounding).
    HalfEven,
    /// Towards zero.
    Down,
}

impl Rounding {
    /// `d` rounded to `dp` decimals this way (the one rounding of money the daemon does).
    pub fn round(self, d: Decimal, dp: u32) -> Decimal {
        d.round_dp_with_strategy(dp, self.strategy())
    }

    fn strategy(self) -> RoundingStrategy {
        match self {
            Rounding::HalfAwayFromZero => RoundingStrategy::MidpointAwayFromZero,
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
            Rounding::Down => RoundingStrategy::ToZero,
        }
    }
}

/// Counts of the cycle, carried into the settlement as control totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Transactions accepted in the cycle.
    pub transactions: i64,
    /// Points earned.
    pub earned: i64,
    /// Points burned.
    pub burned: i64,
    /// Points given back by burn reversals.
    pub burns_reversed: i64,
    /// Points taken back by earn reversals.
    pub earns_reversed: i64,
    /// Points expired by the sweep in the cycle (breakage).
    pub expired: i64,
}

/// Everything a clearing run needs.
#[derive(Debug, Clone)]
pub struct Input {
    /// The cycle (business date).
    pub cycle: NaiveDate,
    /// Settlement currency, ISO 4217.
    pub currency: String,
    /// Its minor units (0 JPY, 2 EUR, 3 BHD).
    pub minor_units: u32,
    /// Rounding of net positions.
    pub rounding: Rounding,
    /// The cycle's allocations.
    pub slices: Vec<Slice>,
    /// The cycle's issuance per issuer and fee, for fees (rows at a fee of zero make their issuer a
    /// participant and charge nothing).
    pub issuance: Vec<Issuance>,
    /// Counts for the control totals.
    pub counts: Counts,
    /// Digest of the previous cycle's settlement ("" for the first).
    pub previous_digest: String,
    /// The head of the ledger's hash chain at the cycle's seal ("" where there is none).
    pub ledger_head: String,
}

/// One cell of the gross matrix: what `issuer` owes `redeemer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Owes.
    pub issuer: String,
    /// Is owed.
    pub redeemer: String,
    /// Net points of the cell's allocations.
    pub points: i64,
    /// Allocations in the cell.
    pub allocations: i64,
    /// Exact value.
    pub value: Decimal,
}

/// A bilateral net: `from` owes `to` `amount` (exact) after offsetting both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bilateral {
    /// Owes.
    pub from: String,
    /// Is owed.
    pub to: String,
    /// Exact amount, positive.
    pub amount: Decimal,
}

/// One participant's multilateral position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Partner id or [`OPERATOR`].
    pub participant: String,
    /// Σ over issuers X of G[X][P]: owed to P for points redeemed at P.
    pub receivable: Decimal,
    /// Σ over redeemers Y of G[P][Y]: owed by P for its points redeemed elsewhere.
    pub payable: Decimal,
    /// Issuance fees (paid by partners, received by the operator).
    pub fees: Decimal,
    /// Exact net: receivable − payable − fees (operator: + all fees).
    pub net_exact: Decimal,
    /// Net rounded to minor units, residual spread so that the column sums to zero.
    pub net: Decimal,
}

/// Direction of a payment instruction relative to the coalition's settlement account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The participant pays the settlement account.
    PaysIn,
    /// The settlement account pays the participant.
    PaidOut,
}

/// A payment instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Who pays or is paid.
    pub participant: String,
    /// Which way.
    pub direction: Direction,
    /// Amount, positive, in minor units' precision.
    pub amount: Decimal,
}

/// Control totals of a settlement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// The cycle's counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Allocations cleared.
    pub allocations: i64,
    /// Σ value of the cross-partner gross cells.
    pub gross_value: Decimal,
    /// Σ value of self-redemptions (reported, no money moves).
    pub self_redemption_value: Decimal,
    /// Σ fees.
    pub fees: Decimal,
    /// Σ paid in = Σ paid out.
    pub settled: Decimal,
}

/// The settlement of one cycle. Everything but `digest` is the canonical content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The cycle.
    pub cycle: NaiveDate,
    /// Currency.
    pub currency: String,
    /// Minor units.
    pub minor_units: u32,
    /// Rounding used.
    pub rounding: Rounding,
    /// G[A][B], A ≠ B, sorted by (issuer, redeemer).
    pub gross: Vec<Cell>,
    /// Issuance fees charged, per issuer and fee in force at issue, sorted (zero fees left out).
    #[serde(default)]
    pub fees: Vec<Issuance>,
    /// Redemptions at the issuing partner itself: reported, move no money.
    pub self_redemptions: Vec<Cell>,
    /// Bilateral nets, sorted by (from, to).
    pub bilateral: Vec<Bilateral>,
    /// Multilateral positions, sorted by participant.
    pub positions: Vec<Position>,
    /// Payment instructions, sorted by participant.
    pub payments: Vec<Payment>,
    /// Control totals.
    pub totals: Totals,
    /// The previous cycle's digest.
    pub previous_digest: String,
    /// The head of the ledger's hash chain when the cycle was sealed: the seal pins the ledger
    /// the settlement was computed from. Absent from settlements made before the chain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ledger_head: String,
    /// What `digest` covers: [`DIGEST_PINNED`] (0, settlements sealed before the content digest:
    /// the content and the ledger head together) or [`DIGEST_CONTENT`] (what the settlement
    /// says, and nothing of how the ledger was batched).
    #[serde(default, skip_serializing_if = "is_pinned")]
    pub digest_scheme: u32,
    /// SHA-256 of the digest and the ledger head ([`seal_of`]), hex; empty without a ledger head
    /// and on settlements of [`DIGEST_PINNED`], whose digest already pins it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seal: String,
    /// SHA-256 of the canonical content (which includes `previous_digest`), hex: the same for
    /// the same ledger on any backend, however its transactions were batched.
    pub digest: String,
}

/// The digest of a settlement sealed before issue 31: its content and its ledger head together.
pub const DIGEST_PINNED: u32 = 0;
/// The digest of what a settlement says, apart from its seal.
pub const DIGEST_CONTENT: u32 = 1;

fn is_pinned(scheme: &u32) -> bool {
    *scheme == DIGEST_PINNED
}

/// Why a settlement cannot be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettleError {
    /// A money sum left Decimal's range.
    #[error("amounts overflow the decimal range")]
    Overflow,
    /// A rate or fee has more decimals than a settlement can carry exactly.
    #[error("rate {0} has more than {MAX_RATE_DECIMALS} decimals")]
    RateTooPrecise(Decimal),
    /// An amount could not be computed exactly (Decimal would have rounded it silently).
    #[error("an amount exceeds the 28 significant digits a settlement can carry exactly")]
    Inexact,
    /// The exact nets do not sum to zero: the inputs are inconsistent.
    #[error("multilateral nets sum to {0}, not zero")]
    Unbalanced(Decimal),
}

/// The most decimals a rate or fee may have. Values are points × rate, so they carry at most this
/// many decimals too, and sums of them stay exact far beyond any realistic cycle.
pub const MAX_RATE_DECIMALS: u32 = 8;

/// `a + b`, exactly or not at all: Decimal's own addition lowers the scale silently when the
/// result does not fit 96 bits, so the sum is done on the mantissas at the larger scale.
fn add(a: Decimal, b: Decimal) -> Result<Decimal, SettleError> {
    let scale = a.scale().max(b.scale());
    let at_scale = |d: Decimal| {
        10i128
            .checked_pow(scale - d.scale())
            .and_then(|f| d.mantissa().checked_mul(f))
            .ok_or(SettleError::Inexact)
    };
    let sum = at_scale(a)?
        .checked_add(at_scale(b)?)
        .ok_or(SettleError::Inexact)?;
    Decimal::try_from_i128_with_scale(sum, scale).map_err(|_| SettleError::Inexact)
}

/// `points × rate`, exactly or not at all.
fn value(points: i64, rate: Decimal) -> Result<Decimal, SettleError> {
    if rate.scale() > MAX_RATE_DECIMALS {
        return Err(SettleError::RateTooPrecise(rate));
    }
    let m = i128::from(points)
        .checked_mul(rate.mantissa())
        .ok_or(SettleError::Inexact)?;
    Decimal::try_from_i128_with_scale(m, rate.scale()).map_err(|_| SettleError::Inexact)
}

/// Clears one cycle. Its participants are who moved money or points in it: every issuer and
/// redeemer of its allocations, every partner that issued points, and the operator when fees are
/// due — never a list of today's partners, so a partner that joined or left later changes nothing.
pub fn settle(input: &Input) -> Result<Settlement, SettleError> {
    // Gross matrix: every slice lands in exactly one cell, keyed (issuer, redeemer).
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    for s in &input.slices {
        let cell = cells
            .entry((s.issuer.clone(), s.redeemer.clone()))
            .or_insert_with(|| Cell {
                issuer: s.issuer.clone(),
                redeemer: s.redeemer.clone(),
                points: 0,
                allocations: 0,
                value: Decimal::ZERO,
            });
        cell.points = cell
            .points
            .checked_add(s.points)
            .ok_or(SettleError::Overflow)?;
        cell.allocations += s.allocations;
        cell.value = add(cell.value, value(s.points, s.rate)?)?;
    }
    let (self_redemptions, gross): (Vec<Cell>, Vec<Cell>) =
        cells.into_values().partition(|c| c.issuer == c.redeemer);

    // Fees per issuer and fee rate, then per issuer.
    let mut fee_lines: BTreeMap<(String, Decimal), i64> = BTreeMap::new();
    for i in &input.issuance {
        let points = fee_lines
            .entry((i.issuer.clone(), i.fee_rate.normalize()))
            .or_default();
        *points = points.checked_add(i.points).ok_or(SettleError::Overflow)?;
    }
    let mut fee_list = Vec::new();
    let mut fees: BTreeMap<String, Decimal> = BTreeMap::new();
    for ((issuer, fee_rate), points) in &fee_lines {
        let v = value(*points, *fee_rate)?;
        if fee_rate.is_zero() || *points == 0 {
            continue;
        }
        let f = fees.entry(issuer.clone()).or_default();
        *f = add(*f, v)?;
        fee_list.push(Issuance {
            issuer: issuer.clone(),
            points: *points,
            fee_rate: *fee_rate,
            value: v,
        });
    }
    let total_fees = fees.values().try_fold(Decimal::ZERO, |a, b| add(a, *b))?;

    let mut participants: Vec<String> = input
        .slices
        .iter()
        .flat_map(|s| [s.issuer.clone(), s.redeemer.clone()])
        .chain(input.issuance.iter().map(|i| i.issuer.clone()))
        .collect();
    if !fee_list.is_empty() {
        participants.push(OPERATOR.to_string());
    }
    participants.sort();
    participants.dedup();

    // Multilateral positions.
    let mut positions = Vec::with_capacity(participants.len());
    for p in &participants {
        let mut receivable = Decimal::ZERO;
        let mut payable = Decimal::ZERO;
        for c in &gross {
            if &c.redeemer == p {
                receivable = add(receivable, c.value)?;
            }
            if &c.issuer == p {
                payable = add(payable, c.value)?;
            }
        }
        let (fee, net_exact) = if p == OPERATOR {
            (total_fees, add(add(receivable, -payable)?, total_fees)?)
        } else {
            let f = fees.get(p).copied().unwrap_or_default();
            (f, add(add(receivable, -payable)?, -f)?)
        };
        positions.push(Position {
            participant: p.clone(),
            receivable,
            payable,
            fees: fee,
            net_exact,
            net: Decimal::ZERO,
        });
    }
    let exact_sum = positions
        .iter()
        .try_fold(Decimal::ZERO, |a, p| add(a, p.net_exact))?;
    if !exact_sum.is_zero() {
        return Err(SettleError::Unbalanced(exact_sum));
    }
    round_positions(&mut positions, input.minor_units, input.rounding)?;

    // Bilateral nets.
    let mut bilateral = Vec::new();
    let g = |a: &str, b: &str| {
        gross
            .iter()
            .find(|c| c.issuer == a && c.redeemer == b)
            .map_or(Decimal::ZERO, |c| c.value)
    };
    for (i, a) in participants.iter().enumerate() {
        for b in &participants[i + 1..] {
            let net = add(g(a, b), -g(b, a))?;
            if net > Decimal::ZERO {
                bilateral.push(Bilateral {
                    from: a.clone(),
                    to: b.clone(),
                    amount: net,
                });
            } else if net < Decimal::ZERO {
                bilateral.push(Bilateral {
                    from: b.clone(),
                    to: a.clone(),
                    amount: -net,
                });
            }
        }
    }
    bilateral.sort_by(|x, y| (&x.from, &x.to).cmp(&(&y.from, &y.to)));

    let payments: Vec<Payment> = positions
        .iter()
        .filter(|p| !p.net.is_zero())
        .map(|p| Payment {
            participant: p.participant.clone(),
            direction: if p.net < Decimal::ZERO {
                Direction::PaysIn
            } else {
                Direction::PaidOut
            },
            amount: p.net.abs(),
        })
        .collect();
    let settled = payments
        .iter()
        .filter(|p| p.direction == Direction::PaidOut)
        .map(|p| p.amount)
        .sum();
    let totals = Totals {
        counts: input.counts,
        allocations: input.slices.iter().map(|s| s.allocations).sum(),
        gross_value: gross
            .iter()
            .try_fold(Decimal::ZERO, |a, c| add(a, c.value))?,
        self_redemption_value: self_redemptions
            .iter()
            .try_fold(Decimal::ZERO, |a, c| add(a, c.value))?,
        fees: total_fees,
        settled,
    };
    let mut s = Settlement {
        cycle: input.cycle,
        currency: input.currency.clone(),
        minor_units: input.minor_units,
        rounding: input.rounding,
        gross,
        fees: fee_list,
        self_redemptions,
        bilateral,
        positions,
        payments,
        totals,
        previous_digest: input.previous_digest.clone(),
        ledger_head: input.ledger_head.clone(),
        digest_scheme: DIGEST_CONTENT,
        seal: String::new(),
        digest: String::new(),
    };
    s.normalize();
    Ok(s.with_scheme(DIGEST_CONTENT))
}

impl Settlement {
    /// Gives every amount one spelling: exact amounts without trailing zeros, rounded amounts with
    /// exactly the currency's minor units. Decimal's scale after a sum depends on the order of the
    /// terms; the canonical form must not.
    fn normalize(&mut self) {
        let mu = self.minor_units;
        let fixed = |d: &mut Decimal| *d = fixed_point(*d, mu);
        for f in &mut self.fees {
            f.fee_rate = exact(f.fee_rate);
            f.value = exact(f.value);
        }
        for c in self
            .gross
            .iter_mut()
            .chain(self.self_redemptions.iter_mut())
        {
            c.value = exact(c.value);
        }
        for b in &mut self.bilateral {
            b.amount = exact(b.amount);
        }
        for p in &mut self.positions {
            p.receivable = exact(p.receivable);
            p.payable = exact(p.payable);
            p.fees = exact(p.fees);
            p.net_exact = exact(p.net_exact);
            fixed(&mut p.net);
        }
        for p in &mut self.payments {
            fixed(&mut p.amount);
        }
        let t = &mut self.totals;
        t.gross_value = exact(t.gross_value);
        t.self_redemption_value = exact(t.self_redemption_value);
        t.fees = exact(t.fees);
        fixed(&mut t.settled);
    }
}

/// An exact amount in its one spelling: no trailing zeros, and zero is `0`, never `-0` (a sum
/// that cancels out keeps Decimal's sign bit).
pub fn exact(d: Decimal) -> Decimal {
    if d.is_zero() {
        Decimal::ZERO
    } else {
        d.normalize()
    }
}

/// A rounded amount with exactly `minor_units` decimals (`0.00`, never `-0.00`).
pub fn fixed_point(d: Decimal, minor_units: u32) -> Decimal {
    let mut d = d.round_dp(minor_units);
    if d.is_zero() {
        d = Decimal::ZERO;
    }
    d.rescale(minor_units);
    d
}

/// Rounds each exact net to minor units, then spreads the residual one minor unit at a time by
/// largest remainder (ties by participant id) so that the rounded nets sum to exactly zero.
fn round_positions(
    positions: &mut [Position],
    minor_units: u32,
    rounding: Rounding,
) -> Result<(), SettleError> {
    let unit = Decimal::new(1, minor_units);
    for p in positions.iter_mut() {
        p.net = p
            .net_exact
            .round_dp_with_strategy(minor_units, rounding.strategy());
    }
    let residual = positions
        .iter()
        .try_fold(Decimal::ZERO, |a, p| add(a, p.net))?;
    // Each net moved by less than one unit, so the residual is fewer units than participants.
    let steps = (residual / unit).abs().trunc().to_u64().unwrap_or(u64::MAX);
    if steps == 0 {
        return Ok(());
    }
    if steps >= positions.len() as u64 {
        return Err(SettleError::Unbalanced(residual));
    }
    // Residual > 0: rounding gave too much away; take a unit back from those rounded up the most.
    let mut order: Vec<usize> = (0..positions.len()).collect();
    let lean = |p: &Position| {
        if residual > Decimal::ZERO {
            p.net - p.net_exact
        } else {
            p.net_exact - p.net
        }
    };
    order.sort_by(|&a, &b| {
        lean(&positions[b])
            .cmp(&lean(&positions[a]))
            .then_with(|| positions[a].participant.cmp(&positions[b].participant))
    });
    let adjust = if residual > Decimal::ZERO {
        -unit
    } else {
        unit
    };
    for &i in order.iter().take(steps as usize) {
        positions[i].net += adjust;
    }
    Ok(())
}

/// The canonical content: the settlement as JSON with its fields in declaration order, sorted
/// collections, decimals as strings, the digest and the seal left empty, and — under
/// [`DIGEST_CONTENT`] — the ledger head too (it belongs to the seal).
pub fn canonical(s: &Settlement) -> String {
    let mut c = s.clone();
    c.digest = String::new();
    c.seal = String::new();
    if c.digest_scheme != DIGEST_PINNED {
        c.ledger_head = String::new();
    }
    // A struct of strings, numbers and decimals: serde_json cannot fail on it.
    serde_json::to_string(&c).unwrap_or_default()
}

/// SHA-256 over the canonical content (which carries the previous cycle's digest), hex.
pub fn digest_of(s: &Settlement) -> String {
    hex::encode(Sha256::digest(canonical(s).as_bytes()))
}

/// SHA-256 over the content digest and the ledger head the settlement pins, hex; empty where
/// there is no ledger head or the digest itself pins it ([`DIGEST_PINNED`]).
pub fn seal_of(s: &Settlement) -> String {
    if s.ledger_head.is_empty() || s.digest_scheme == DIGEST_PINNED {
        return String::new();
    }
    let mut h = Sha256::new();
    h.update(b"coalition settlement seal v1\n");
    h.update(s.digest.as_bytes());
    h.update(b"\n");
    h.update(s.ledger_head.as_bytes());
    hex::encode(h.finalize())
}

impl Settlement {
    /// The same settlement with its digest (and seal) computed under `scheme`: a re-run or an
    /// audit recomputes a stored settlement under the scheme it was sealed with.
    pub fn with_scheme(mut self, scheme: u32) -> Settlement {
        self.digest_scheme = scheme;
        self.digest = digest_of(&self);
        self.seal = seal_of(&self);
        self
    }
}
