//! The programme's rules, pure: tiers (qualifying points over a rolling window, immediate
//! promotion, demotion only at a review and one level at a time) and campaigns (a window, a
//! scope, conditions, an effect, a cap per member and a funder). Given what the store loaded
//! about a member, [`price_earn`] says what an earn is made of; nothing here does I/O.
//!
//! How bonuses stack: every bonus is computed on the **base** points of the earn, never on another
//! bonus. The tier multiplier adds `floor(base × (multiplier − 1))`; each campaign that applies
//! adds its own part (`floor(base × (multiplier − 1))` or its fixed points), cut to what is left
//! of its cap for the member. All that apply are added; parts are listed base, tier, then
//! campaigns by id.

use crate::ledger::{Funder, MAX_POINTS_PER_TRANSACTION, Micros, Part, PartKind};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use std::collections::{BTreeMap, BTreeSet};

/// One day in microseconds: qualifying points are kept per UTC day.
pub const DAY: Micros = 86_400_000_000;

/// The largest multiplier a tier or campaign may have (so no earn can overflow by a rule).
pub const MAX_MULTIPLIER: i64 = 100;

/// The UTC day number of an instant (days since 1970-01-01).
pub fn day_of(at: Micros) -> i64 {
    at.div_euclid(DAY)
}

/// `at` plus `months` calendar months (UTC), or `None` outside chrono's range.
pub fn add_months(at: Micros, months: i32) -> Option<Micros> {
    let t = chrono::DateTime::from_timestamp_micros(at)?;
    let t = if months >= 0 {
        t.checked_add_months(chrono::Months::new(months as u32))?
    } else {
        t.checked_sub_months(chrono::Months::new(months.unsigned_abs()))?
    };
    Some(t.timestamp_micros())
}

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Its name (`bronze`, `silver`, …).
    pub name: String,
    /// Qualifying points needed to reach it.
    pub threshold: i64,
    /// Earn multiplier on base points (1 = no bonus).
    pub multiplier: Decimal,
}

/// The coalition's tiers, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    /// Rungs, lowest first; the first has threshold 0.
    pub tiers: Vec<Tier>,
    /// Who funds the tier bonus.
    pub funder: Funder,
    /// Qualifying points count over this many months back.
    pub window_months: u32,
    /// A tier is reviewed this many months after it was reached, and every as many after.
    pub review_months: u32,
}

impl Ladder {
    /// The default ladder: bronze, silver, gold, diamond.
    pub fn default_ladder() -> Ladder {
        let tier = |name: &str, threshold, m: i64| Tier {
            name: name.into(),
            threshold,
            multiplier: Decimal::new(m, 2),
        };
        Ladder {
            tiers: vec![
                tier("bronze", 0, 100),
                tier("silver", 1_000, 125),
                tier("gold", 5_000, 150),
                tier("diamond", 20_000, 200),
            ],
            funder: Funder::Partner,
            window_months: 12,
            review_months: 12,
        }
    }

    /// The highest tier `qualifying` points reach.
    pub fn qualified(&self, qualifying: i64) -> usize {
        self.tiers
            .iter()
            .rposition(|t| t.threshold <= qualifying)
            .unwrap_or(0)
    }

    /// The index of a tier by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// The first UTC day counted by the window ending at `at` (days before it have dropped out).
    pub fn first_counted_day(&self, at: Micros) -> i64 {
        add_months(at, -(self.window_months as i32))
            .map(|s| day_of(s) + 1)
            .unwrap_or(i64::MIN)
    }

    /// The review after `from`.
    pub fn next_review(&self, from: Micros) -> Micros {
        add_months(from, self.review_months as i32).unwrap_or(Micros::MAX)
    }
}

/// A member's tier as stored: which rung, since when, and when it is next reviewed. A member
/// without a stored tier is on the lowest rung with nothing to review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierState {
    /// Index into the ladder.
    pub tier: usize,
    /// When the member reached it (or kept it at a review).
    pub since: Micros,
    /// When it is next reviewed.
    pub review_at: Micros,
}

/// What the store knows of one member's programme state.
#[derive(Debug, Clone, Default)]
pub struct MemberProgramme {
    /// The stored tier, if above the lowest rung or ever reviewed.
    pub tier: Option<TierState>,
    /// Qualifying points per UTC day, for the days a window or a due review may count.
    pub days: BTreeMap<i64, i64>,
    /// The first day still kept in `days` (earlier ones no window can count any more were
    /// dropped); `None`: every day is kept.
    pub days_from: Option<i64>,
    /// Points each campaign has granted the member so far (net of reversals).
    pub granted: BTreeMap<String, i64>,
    /// Partners the member has earned at before (for welcome campaigns).
    pub earned_at: BTreeSet<String>,
    /// Stamp cards by partner.
    pub cards: BTreeMap<String, Card>,
    /// Vouchers (read for `GetMember` only).
    pub vouchers: Vec<Voucher>,
}

/// A partner's stamp card rule: every `every`th purchase of at least `min_amount` within
/// `within_days` of the card's first stamp completes the card and earns the reward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampRule {
    /// Purchases per card.
    pub every: u32,
    /// Smallest purchase that earns a stamp.
    pub min_amount: Decimal,
    /// A card not completed this many days after its first stamp starts over.
    pub within_days: u32,
    /// What a completed card gives.
    pub reward: StampReward,
}

/// What a completed stamp card gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampReward {
    /// Bonus points, a part of the completing earn funded by the partner.
    Points(i64),
    /// A voucher redeemable only at the partner, valid `days` days.
    Voucher {
        /// What it is worth ("a free meal").
        what: String,
        /// Days it stays valid.
        days: u32,
    },
}

/// Whether a purchase still earns its stamp with `left` of its earn's `points` not reversed: some
/// of it must be left, and the purchase net of its returns (its amount in proportion to the points
/// left, as a reversal's points are split over the earn's parts) must still meet the card's
/// `min_amount`. Without a purchase amount or a minimum, only a full reversal takes the stamp.
pub fn stamp_stands(
    min_amount: Option<Decimal>,
    amount: Option<Decimal>,
    points: i64,
    left: i64,
) -> bool {
    if left <= 0 {
        return false;
    }
    match (min_amount, amount) {
        (Some(min), Some(amount)) if points > 0 && min > Decimal::ZERO => {
            // amount × left / points ≥ min, without dividing.
            match (
                amount.checked_mul(Decimal::from(left)),
                min.checked_mul(Decimal::from(points)),
            ) {
                (Some(net), Some(need)) => net >= need,
                _ => true,
            }
        }
        _ => true,
    }
}

/// A member's stamp card at one partner. The count goes below zero when a purchase whose stamp
/// completed a card is reversed in full: the next purchase then makes up for it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Card {
    /// Stamps on the card.
    pub stamps: i64,
    /// When its first stamp was given.
    pub started_at: Micros,
}

/// A voucher from a completed stamp card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voucher {
    /// Its id (`v<earn ledger id>`).
    pub id: String,
    /// The member.
    pub member: String,
    /// The only partner that redeems it.
    pub partner: String,
    /// What it is worth.
    pub what: String,
    /// When it was issued and until when it is valid (exclusive).
    pub issued_at: Micros,
    /// Expiry.
    pub expires_at: Micros,
    /// The ledger id of the earn whose stamp completed the card.
    pub earn: i64,
    /// When it was redeemed.
    pub redeemed_at: Option<Micros>,
    /// The partner's transaction id of the redemption.
    pub redeemed_by: Option<String>,
}

/// The stamp a purchase would give: the count after it and whether it completes the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Stamps on the card with this one (before a completed card starts over).
    pub count: i64,
    /// Purchases per card.
    pub every: u32,
    /// Whether it completes the card.
    pub completed: bool,
}

impl StampRule {
    /// The stamp a purchase of `amount` at `now` gives on `card`, if it qualifies.
    pub fn next(&self, card: Option<&Card>, amount: Option<Decimal>, now: Micros) -> Option<Stamp> {
        let amount = amount?;
        if amount < self.min_amount {
            return None;
        }
        let current = match card {
            Some(c)
                if c.stamps > 0
                    && now >= c.started_at.saturating_add(self.within_days as i64 * DAY) =>
            {
                0
            }
            Some(c) => c.stamps,
            None => 0,
        };
        let count = current + 1;
        Some(Stamp {
            count,
            every: self.every,
            completed: count >= self.every as i64,
        })
    }

    /// The part a stamp adds to the earn (points only for a completed card with a points reward).
    pub fn part(&self, s: &Stamp) -> Part {
        Part {
            kind: PartKind::Stamp,
            source: format!("{}/{}", s.count.min(s.every as i64), s.every),
            funder: Funder::Partner,
            points: match (&self.reward, s.completed) {
                (StampReward::Points(p), true) => *p,
                _ => 0,
            },
        }
    }
}

impl MemberProgramme {
    /// Qualifying points of the window ending at `at`.
    pub fn qualifying_at(&self, ladder: &Ladder, at: Micros) -> i64 {
        let (from, to) = (ladder.first_counted_day(at), day_of(at));
        self.days.range(from..=to).map(|(_, p)| *p).sum()
    }

    /// The tier index now (the lowest rung without a stored tier).
    pub fn tier_index(&self) -> usize {
        self.tier.as_ref().map_or(0, |t| t.tier)
    }

    /// Applies every review due by `now`, in order: each keeps the tier if the window ending at
    /// the review still qualifies for it, and otherwise drops it by one rung at most.
    pub fn apply_reviews(&mut self, ladder: &Ladder, now: Micros) {
        // Bounded: one review per review period; a member absent for centuries is on the lowest
        // rung long before this runs out.
        for _ in 0..1_000 {
            let Some(t) = self.tier.clone() else { return };
            if t.review_at > now || t.tier == 0 {
                return;
            }
            let q = ladder.qualified(self.qualifying_at(ladder, t.review_at));
            let tier = if q >= t.tier { t.tier } else { t.tier - 1 };
            self.tier = Some(TierState {
                tier,
                since: if tier == t.tier { t.since } else { t.review_at },
                review_at: ladder.next_review(t.review_at),
            });
        }
    }

    /// What the next review would give if it were today (the window ending now, one rung down at
    /// most).
    pub fn review_today(&self, ladder: &Ladder, now: Micros) -> usize {
        let current = self.tier_index();
        let q = ladder.qualified(self.qualifying_at(ladder, now));
        if q >= current { current } else { current - 1 }
    }

    /// Counts `points` as qualifying on the day of `at` (negative: a reversal of an earn of that
    /// day).
    pub fn add_qualifying(&mut self, at: Micros, points: i64) {
        *self.days.entry(day_of(at)).or_default() += points;
    }

    /// Promotes to the tier the window ending at `now` reaches, if it is higher; a promotion
    /// starts a new review period.
    pub fn promote(&mut self, ladder: &Ladder, now: Micros) -> bool {
        let q = ladder.qualified(self.qualifying_at(ladder, now));
        if q > self.tier_index() {
            self.tier = Some(TierState {
                tier: q,
                since: now,
                review_at: ladder.next_review(now),
            });
            return true;
        }
        false
    }
}

/// What a campaign gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The campaign's part is `floor(base × (multiplier − 1))`: ×2 doubles the base points.
    Multiplier(Decimal),
    /// A fixed number of points.
    Bonus(i64),
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// Its id (chosen by the programme team).
    pub id: String,
    /// A name people read.
    pub name: String,
    /// First instant it applies (inclusive).
    pub starts_at: Micros,
    /// First instant it no longer applies (exclusive).
    pub ends_at: Micros,
    /// Partners it applies at (empty: any, unless kinds are given).
    pub partners: Vec<String>,
    /// Partner kinds it applies at (empty: any, unless partners are given).
    pub partner_kinds: Vec<String>,
    /// Smallest purchase amount it applies to (a purchase is then required).
    pub min_amount: Option<Decimal>,
    /// Tiers it applies to (empty: every tier).
    pub tiers: Vec<String>,
    /// The purchase category the till must send (none: any).
    pub category: Option<String>,
    /// Only the member's first earn at the partner (a welcome bonus).
    pub welcome: bool,
    /// What it gives.
    pub effect: Effect,
    /// The most points it grants one member over its life.
    pub cap_per_member: Option<i64>,
    /// Who funds it.
    pub funder: Funder,
    /// When it was created, and by whom.
    pub created_at: Micros,
    /// The creator's identity.
    pub created_by: String,
    /// When it was ended early, if it was.
    pub ended_at: Option<Micros>,
}

impl Campaign {
    /// Whether `other` has the same terms (everything but who created it, when, and an early end):
    /// a retried creation.
    pub fn same_terms(&self, other: &Campaign) -> bool {
        let strip = |c: &Campaign| Campaign {
            created_at: 0,
            created_by: String::new(),
            ended_at: None,
            ..c.clone()
        };
        strip(self) == strip(other)
    }

    /// Whether it is in force at `now`.
    pub fn live(&self, now: Micros) -> bool {
        self.starts_at <= now && now < self.ends_at && self.ended_at.is_none_or(|e| now < e)
    }

    /// Whether it applies to this earn (window, scope and conditions; not the cap).
    pub fn applies(&self, e: &EarnFacts<'_>) -> bool {
        let in_scope = (self.partners.is_empty() && self.partner_kinds.is_empty())
            || self.partners.iter().any(|p| p == e.partner)
            || self.partner_kinds.iter().any(|k| k == e.partner_kind);
        self.live(e.now)
            && in_scope
            && self
                .min_amount
                .is_none_or(|min| e.amount.is_some_and(|a| a >= min))
            && (self.tiers.is_empty() || self.tiers.iter().any(|t| Some(t.as_str()) == e.tier))
            && self
                .category
                .as_deref()
                .is_none_or(|c| e.category == Some(c))
            && (!self.welcome || !e.earned_here_before)
    }
}

/// What an earn is, as the rules see it.
#[derive(Debug, Clone)]
pub struct EarnFacts<'a> {
    /// The earning partner.
    pub partner: &'a str,
    /// Its kind (`airline`, `supermarket`, …).
    pub partner_kind: &'a str,
    /// Base points by the partner's earn rule or its explicit bonus.
    pub base: i64,
    /// The purchase amount, if the earn is a purchase.
    pub amount: Option<Decimal>,
    /// The purchase category sent by the till.
    pub category: Option<&'a str>,
    /// The member's tier name before the earn (none without a ladder).
    pub tier: Option<&'a str>,
    /// Whether the member earned at this partner before.
    pub earned_here_before: bool,
    /// The partner's stamp card rule, if it runs one.
    pub stamps: Option<&'a StampRule>,
    /// The acceptance instant.
    pub now: Micros,
}

/// Why the rules cannot price an earn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgrammeError {
    /// The parts would exceed the most points one transaction may move.
    #[error("the earn's parts add up to more than {MAX_POINTS_PER_TRANSACTION} points")]
    Overflow,
}

fn extra(base: i64, multiplier: Decimal) -> Result<i64, ProgrammeError> {
    let m = multiplier - Decimal::ONE;
    if m <= Decimal::ZERO {
        return Ok(0);
    }
    Decimal::from(base)
        .checked_mul(m)
        .and_then(|v| v.floor().to_i64())
        .ok_or(ProgrammeError::Overflow)
}

/// An earn as the rules price it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// Its parts, base first.
    pub parts: Vec<Part>,
    /// The stamp it gives, if the purchase qualifies for the partner's card.
    pub stamp: Option<Stamp>,
}

/// What an earn is made of: the base, the tier bonus, each campaign that applies (cut to its cap),
/// the stamp. Campaigns are taken in id order; `m` gives what each campaign already granted the
/// member and the member's card.
pub fn price_earn(
    ladder: Option<&Ladder>,
    campaigns: &[Campaign],
    m: &MemberProgramme,
    e: &EarnFacts<'_>,
) -> Result<Priced, ProgrammeError> {
    let mut parts = vec![Part::base(e.base)];
    if let Some(l) = ladder {
        let t = &l.tiers[m.tier_index().min(l.tiers.len() - 1)];
        let p = extra(e.base, t.multiplier)?;
        if p > 0 {
            parts.push(Part {
                kind: PartKind::Tier,
                source: t.name.clone(),
                funder: l.funder,
                points: p,
            });
        }
    }
    let mut sorted: Vec<&Campaign> = campaigns.iter().filter(|c| c.applies(e)).collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for c in sorted {
        let mut p = match &c.effect {
            Effect::Multiplier(x) => extra(e.base, *x)?,
            Effect::Bonus(b) => *b,
        };
        if let Some(cap) = c.cap_per_member {
            let used = m.granted.get(&c.id).copied().unwrap_or(0);
            p = p.min((cap - used).max(0));
        }
        if p > 0 {
            parts.push(Part {
                kind: PartKind::Campaign,
                source: c.id.clone(),
                funder: c.funder,
                points: p,
            });
        }
    }
    let stamp = e
        .stamps
        .and_then(|rule| rule.next(m.cards.get(e.partner), e.amount, e.now));
    if let (Some(rule), Some(st)) = (e.stamps, &stamp) {
        parts.push(rule.part(st));
    }
    let total = parts
        .iter()
        .try_fold(0i64, |a, p| a.checked_add(p.points))
        .ok_or(ProgrammeError::Overflow)?;
    if total > MAX_POINTS_PER_TRANSACTION {
        return Err(ProgrammeError::Overflow);
    }
    Ok(Priced { parts, stamp })
}

/// Records an earn's effect on the member's programme state: qualifying points (every part),
/// campaign grants, the partner earned at, the stamp on its card, and an immediate promotion.
/// Returns the tier after.
pub fn record_earn(
    ladder: Option<&Ladder>,
    m: &mut MemberProgramme,
    partner: &str,
    priced: &Priced,
    now: Micros,
) -> Option<String> {
    for p in priced.parts.iter().filter(|p| p.kind == PartKind::Campaign) {
        *m.granted.entry(p.source.clone()).or_default() += p.points;
    }
    m.earned_at.insert(partner.to_string());
    if let Some(st) = &priced.stamp {
        let card = m.cards.entry(partner.to_string()).or_default();
        // A completed card starts over.
        card.stamps = if st.completed { 0 } else { st.count };
        if st.count == 1 {
            card.started_at = now;
        }
    }
    let l = ladder?;
    m.add_qualifying(now, priced.parts.iter().map(|p| p.points).sum());
    m.promote(l, now);
    Some(l.tiers[m.tier_index().min(l.tiers.len() - 1)].name.clone())
}

/// A campaign refused at creation: the field at fault, a reason code and words for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The request field.
    pub field: &'static str,
    /// A reason code (`google.rpc.ErrorInfo.reason`).
    pub reason: &'static str,
    /// What to change.
    pub message: String,
}

fn invalid(field: &'static str, reason: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason,
        message: message.into(),
    }
}

/// Whether `id` is a well-formed campaign id.
pub fn valid_campaign_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Checks a new campaign against the partners and kinds the coalition has, the ladder, and the
/// campaigns whose window overlaps its own (whose caps together must fit the ledger's counters).
pub fn validate(
    c: &Campaign,
    partners: &BTreeMap<String, String>,
    ladder: Option<&Ladder>,
    others: &[Campaign],
) -> Result<(), Invalid> {
    if !valid_campaign_id(&c.id) {
        return Err(invalid(
            "campaign_id",
            "MALFORMED_CAMPAIGN_ID",
            "use 1..=64 letters, digits, '-', '_' or '.'",
        ));
    }
    if c.name.trim().is_empty() || c.name.chars().count() > 200 {
        return Err(invalid("name", "MALFORMED_NAME", "use 1..=200 characters"));
    }
    if c.ends_at <= c.starts_at {
        return Err(invalid(
            "ends",
            "END_NOT_AFTER_START",
            "the end must come after the start",
        ));
    }
    if let Some(p) = c.partners.iter().find(|p| !partners.contains_key(*p)) {
        return Err(invalid(
            "partners",
            "UNKNOWN_PARTNER",
            format!("{p:?} is not a partner of the coalition"),
        ));
    }
    if let Some(k) = c
        .partner_kinds
        .iter()
        .find(|k| !partners.values().any(|v| v == *k))
    {
        return Err(invalid(
            "partner_kinds",
            "UNKNOWN_PARTNER_KIND",
            format!("no partner of the coalition is of kind {k:?}"),
        ));
    }
    if c.min_amount.is_some_and(|a| a < Decimal::ZERO) {
        return Err(invalid(
            "min_purchase",
            "NEGATIVE_AMOUNT",
            "the minimum purchase must not be negative",
        ));
    }
    if let Some(t) = c
        .tiers
        .iter()
        .find(|t| ladder.is_none_or(|l| l.index(t).is_none()))
    {
        return Err(invalid(
            "tiers",
            "UNKNOWN_TIER",
            format!("{t:?} is not a tier of the coalition's ladder"),
        ));
    }
    match &c.effect {
        Effect::Multiplier(m) if *m <= Decimal::ONE || *m > Decimal::from(MAX_MULTIPLIER) => {
            return Err(invalid(
                "multiplier",
                "MULTIPLIER_OUT_OF_RANGE",
                format!(
                    "a multiplier must be above 1 (×2 doubles the base points) and at most {MAX_MULTIPLIER}"
                ),
            ));
        }
        Effect::Bonus(b) if *b < 1 || *b > MAX_POINTS_PER_TRANSACTION => {
            return Err(invalid(
                "bonus_points",
                "BONUS_OUT_OF_RANGE",
                format!("use 1..={MAX_POINTS_PER_TRANSACTION} points"),
            ));
        }
        _ => {}
    }
    if let Some(cap) = c.cap_per_member {
        if !(1..=MAX_POINTS_PER_TRANSACTION).contains(&cap) {
            return Err(invalid(
                "cap_per_member",
                "CAP_OUT_OF_RANGE",
                format!("use 1..={MAX_POINTS_PER_TRANSACTION} points, or 0 for no cap"),
            ));
        }
        // Campaigns live at the same time may all pay one member: their caps together must fit
        // the most one transaction may move, so no earn can overflow by their sum.
        let overlapping: i64 = others
            .iter()
            .filter(|o| o.id != c.id && o.starts_at < c.ends_at && c.starts_at < o.ends_at)
            .filter(|o| o.ended_at.is_none_or(|e| e > c.starts_at))
            .filter_map(|o| o.cap_per_member)
            .sum();
        if overlapping.saturating_add(cap) > MAX_POINTS_PER_TRANSACTION {
            return Err(invalid(
                "cap_per_member",
                "CAPS_OVERFLOW",
                format!(
                    "with the caps of the campaigns overlapping its window ({overlapping}), this cap would exceed {MAX_POINTS_PER_TRANSACTION} points"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
