//! Holds at the till, pure: an authorization takes points out of the member's lots at once (as a
//! burn would, soonest expiry first) into slices of the hold; a capture turns slices into
//! allocations (the burn), the rest goes back to the very lots; a void or the hold's end gives
//! everything back. Held points are in no lot's `points_left`, so neither a burn, another hold nor
//! the expiry sweep can take them, and a capture within the hold always finds them.

use super::{Allocation, MemberLedger, Micros, Refusal};
use rust_decimal::Decimal;

/// Points a hold took from one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSlice {
    /// The lot.
    pub lot: i64,
    /// Points held from it.
    pub points: i64,
}

impl MemberLedger {
    /// Reserves `points` for a hold: refused unless the balance (unexpired points minus debt)
    /// covers them, as a burn would be.
    pub fn hold(&mut self, points: i64, now: Micros) -> Result<Vec<HeldSlice>, Refusal> {
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
        // Taken as a burn takes points (the allocations are not kept: only where they came from).
        let (taken, short) = self.take_from_lots(0, "", Decimal::ZERO, points, now, &[]);
        assert_eq!(short, 0, "balance check guarantees the lots cover the hold");
        Ok(taken
            .into_iter()
            .map(|a| HeldSlice {
                lot: a.lot,
                points: a.points,
            })
            .collect())
    }

    /// Gives held slices back to the lots they came from (expired lots too: what expired while
    /// held is then swept like any expired point).
    pub fn release(&mut self, slices: &[HeldSlice]) {
        for s in slices {
            let lot = self.lot_mut(s.lot);
            lot.points_left += s.points;
            lot.dirty = true;
        }
    }

    /// Captures `points` of a hold as the burn `txn` at `redeemer`: allocations from the held
    /// slices in the order they were taken, priced at `rate`; the rest goes back to its lots.
    /// The caller checks `points` against the hold.
    pub fn capture(
        &mut self,
        txn: i64,
        redeemer: &str,
        rate: Decimal,
        slices: &[HeldSlice],
        points: i64,
        now: Micros,
    ) -> Vec<Allocation> {
        let held: i64 = slices.iter().map(|s| s.points).sum();
        assert!(
            (1..=held).contains(&points),
            "a capture takes 1..=held points"
        );
        let mut left = points;
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for s in slices {
            let k = s.points.min(left);
            left -= k;
            if k > 0 {
                let lot = self.lot_mut(s.lot);
                lot.dirty = true;
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
            if s.points > k {
                rest.push(HeldSlice {
                    lot: s.lot,
                    points: s.points - k,
                });
            }
        }
        self.release(&rest);
        out
    }
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Points reserved, waiting for a capture or a void.
    Held,
    /// Turned (in all or in part) into a burn; the rest went back.
    Captured,
    /// Released by the partner.
    Voided,
    /// Released because it ran out.
    Expired,
}

impl HoldState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Held => "held",
            HoldState::Captured => "captured",
            HoldState::Voided => "voided",
            HoldState::Expired => "expired",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<HoldState> {
        [
            HoldState::Held,
            HoldState::Captured,
            HoldState::Voided,
            HoldState::Expired,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// A hold as its partner sees it (on the receipts of authorizations, captures and voids).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HoldView {
    /// The partner's id of the authorization.
    pub authorization_id: String,
    /// Where it stands.
    pub state: HoldState,
    /// Points reserved.
    pub points: i64,
    /// Points captured.
    pub captured: i64,
    /// When it was authorized.
    pub authorized_at: Micros,
    /// When it runs out.
    pub expires_at: Micros,
    /// The partner's id of the capture or void that closed it.
    pub closed_by: Option<String>,
}
