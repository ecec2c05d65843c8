//! The parts of an earn and who funds each: an earn is the sum of its parts (base, tier bonus,
//! campaign bonuses), and each funder's parts are one lot of that funder, so clearing knows who
//! owes for every point. A reversal takes every part back in proportion.

use serde::{Deserialize, Serialize};

/// Who pays for a part of an earn: the partner that granted it, or the coalition operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Funder {
    /// The earning partner issues the points (and owes for them where they are burned).
    Partner,
    /// The coalition operator issues them: an issuer in clearing like any partner.
    Operator,
}

impl Funder {
    /// The issuer a lot of this funder names, for an earn of `partner`.
    pub fn issuer(self, partner: &str) -> &str {
        match self {
            Funder::Partner => partner,
            Funder::Operator => coalition_clearing::OPERATOR,
        }
    }

    /// The id of this funder's lot of earn `earn`: the earn's id for the partner's lot, its
    /// negation for the operator's (so an earn's lots are found from its id alone).
    pub fn lot_of(self, earn: i64) -> i64 {
        match self {
            Funder::Partner => earn,
            Funder::Operator => -earn,
        }
    }

    /// As configured or sent: `partner` or `operator`.
    pub fn parse(s: &str) -> Option<Funder> {
        match s {
            "partner" => Some(Funder::Partner),
            "operator" => Some(Funder::Operator),
            _ => None,
        }
    }

    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            Funder::Partner => "partner",
            Funder::Operator => "operator",
        }
    }
}

/// What a part of an earn is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartKind {
    /// The partner's earn rule (or its explicit bonus).
    Base,
    /// The member's tier multiplier on the base points.
    Tier,
    /// A campaign.
    Campaign,
    /// A stamp card's stamp (points only when it completes a card with a points reward).
    Stamp,
}

impl PartKind {
    /// Its name on receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::Base => "base",
            PartKind::Tier => "tier",
            PartKind::Campaign => "campaign",
            PartKind::Stamp => "stamp",
        }
    }
}

/// One part of an earn (or, on an earn reversal's receipt, what was taken back of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// What it is for.
    #[serde(rename = "k")]
    pub kind: PartKind,
    /// The tier's name or the campaign's id; empty for the base.
    #[serde(rename = "s", default)]
    pub source: String,
    /// Who pays for it.
    #[serde(rename = "f")]
    pub funder: Funder,
    /// Points (always positive on an earn; what was taken back on a reversal).
    #[serde(rename = "p")]
    pub points: i64,
}

impl Part {
    /// The base part of a plain earn.
    pub fn base(points: i64) -> Part {
        Part {
            kind: PartKind::Base,
            source: String::new(),
            funder: Funder::Partner,
            points,
        }
    }

    /// Whether `parts` is the one base part of a plain earn (stored as nothing).
    pub fn is_plain(parts: &[Part]) -> bool {
        matches!(parts, [p] if p.kind == PartKind::Base && p.funder == Funder::Partner)
    }
}

/// Points per funder, in funder order (partner first), funders with no points left out.
pub fn by_funder(parts: &[Part]) -> Vec<(Funder, i64)> {
    let mut out: Vec<(Funder, i64)> = Vec::new();
    for p in parts {
        match out.iter_mut().find(|(f, _)| *f == p.funder) {
            Some((_, s)) => *s += p.points,
            None => out.push((p.funder, p.points)),
        }
    }
    out.retain(|(_, p)| *p != 0);
    out.sort();
    out
}

/// Splits `points` over `remaining` in proportion, by largest remainder (ties: the earlier
/// part), so that the shares sum to `points` exactly and no share exceeds its part's remaining.
/// `None` if `points` exceeds the sum of `remaining` or an input is negative.
pub fn split(points: i64, remaining: &[i64]) -> Option<Vec<i64>> {
    let total: i128 = remaining.iter().map(|&r| r as i128).sum();
    if points < 0 || remaining.iter().any(|&r| r < 0) || points as i128 > total {
        return None;
    }
    if total == 0 {
        return Some(vec![0; remaining.len()]);
    }
    let mut shares: Vec<i64> = Vec::with_capacity(remaining.len());
    let mut rems: Vec<(i128, usize)> = Vec::with_capacity(remaining.len());
    for (i, &r) in remaining.iter().enumerate() {
        let q = points as i128 * r as i128;
        shares.push((q / total) as i64);
        rems.push((q % total, i));
    }
    let mut residual = points - shares.iter().sum::<i64>();
    // Largest remainder first, earlier part first on ties.
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (rem, i) in rems {
        if residual == 0 {
            break;
        }
        if rem > 0 {
            shares[i] += 1;
            residual -= 1;
        }
    }
    debug_assert_eq!(residual, 0);
    debug_assert!(shares.iter().zip(remaining).all(|(s, r)| s <= r));
    Some(shares)
}

/// Parts as stored: nothing for a plain earn (or a transaction without parts), JSON otherwise.
pub fn encode(parts: &[Part]) -> Option<String> {
    if parts.is_empty() || Part::is_plain(parts) {
        None
    } else {
        serde_json::to_string(parts).ok()
    }
}

/// Reads stored parts back; nothing stored is the one base part of `points`.
pub fn decode(stored: Option<&str>, points: i64) -> Result<Vec<Part>, String> {
    match stored {
        None => Ok(vec![Part::base(points)]),
        Some(s) => serde_json::from_str(s).map_err(|e| format!("bad parts {s:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_is_proportional_with_largest_remainder() {
        assert_eq!(split(10, &[100, 50, 50]), Some(vec![5, 3, 2]));
        assert_eq!(split(1, &[1, 1]), Some(vec![1, 0]));
        assert_eq!(split(0, &[3, 4]), Some(vec![0, 0]));
        assert_eq!(split(8, &[3, 4]), None);
        assert_eq!(split(7, &[3, 4]), Some(vec![3, 4]));
    }

    proptest! {
        #[test]
        fn split_sums_exactly_and_never_exceeds_a_part(
            remaining in proptest::collection::vec(0i64..1_000_000_000_000, 1..6),
            frac in 0.0f64..=1.0,
        ) {
            let total: i64 = remaining.iter().sum();
            let points = ((total as f64) * frac) as i64;
            let points = points.min(total);
            let shares = split(points, &remaining).unwrap();
            prop_assert_eq!(shares.iter().sum::<i64>(), points);
            for (s, r) in shares.iter().zip(&remaining) {
                prop_assert!(*s >= 0 && s <= r);
                // Within one point of the exact proportion.
                let exact = points as f64 * *r as f64 / total.max(1) as f64;
                prop_assert!((*s as f64 - exact).abs() < 1.0 + 1e-6 * exact.max(1.0));
            }
        }
    }
}
