//! Programme reports, pure: months, the KPIs of each month from the sums the store computes
//! (`store::report`), and their renderings (table, CSV, JSON; `html` for the self-contained page).
//! No I/O: the store aggregates in SQL, this module divides and formats.

pub mod html;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use std::collections::BTreeMap;

/// Most months one report covers (a bound on its size and on the SQL's buckets).
pub const MAX_MONTHS: i64 = 36;

/// Days within which a new member's second transaction counts as activation.
pub const ACTIVATION_DAYS: i64 = 30;

/// Digits of a rate (0.2500 = 25 %).
pub const RATE_DP: u32 = 4;

/// A calendar month as one number: year × 12 + month − 1 (so the month before is `m − 1`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(pub i64);

impl Month {
    /// From `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        let y: i64 = y.parse().ok()?;
        let m: i64 = m.parse().ok()?;
        ((1..=12).contains(&m) && (1970..=9999).contains(&y)).then_some(Month(y * 12 + m - 1))
    }

    /// The month of a business day.
    pub fn of(d: chrono::NaiveDate) -> Month {
        use chrono::Datelike;
        Month(i64::from(d.year()) * 12 + i64::from(d.month0()))
    }

    /// The first business day's name of the month, `YYYY-MM-01`: cycles sort as text, so
    /// `cycle >= first_day(m) AND cycle < first_day(m + 1)` is the month.
    pub fn first_day(self) -> String {
        format!("{}-01", self)
    }

    /// The month `n` later (or earlier).
    pub fn plus(self, n: i64) -> Month {
        Month(self.0 + n)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}",
            self.0.div_euclid(12),
            self.0.rem_euclid(12) + 1
        )
    }
}

/// A report's months, checked: `from ≤ to`, at most [`MAX_MONTHS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First month, included.
    pub from: Month,
    /// Last month, included.
    pub to: Month,
}

/// Why a span or partner cannot be reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// Not `YYYY-MM`.
    #[error("{0:?} is not a month; write YYYY-MM, e.g. 2026-01")]
    NotAMonth(String),
    /// The last month is before the first.
    #[error("the last month {to} is before the first {from}")]
    Reversed {
        /// First month.
        from: String,
        /// Last month.
        to: String,
    },
    /// Too many months.
    #[error("{0} months asked; a report covers at most {MAX_MONTHS}")]
    TooLong(i64),
}

impl Span {
    /// From the request's two months.
    pub fn parse(from: &str, to: &str) -> Result<Span, SpanError> {
        let f = Month::parse(from.trim()).ok_or_else(|| SpanError::NotAMonth(from.into()))?;
        let t = Month::parse(to.trim()).ok_or_else(|| SpanError::NotAMonth(to.into()))?;
        if t < f {
            return Err(SpanError::Reversed {
                from: f.to_string(),
                to: t.to_string(),
            });
        }
        let n = t.0 - f.0 + 1;
        if n > MAX_MONTHS {
            return Err(SpanError::TooLong(n));
        }
        Ok(Span { from: f, to: t })
    }

    /// The months in order.
    pub fn months(self) -> impl Iterator<Item = Month> {
        (self.from.0..=self.to.0).map(Month)
    }
}

/// What the store sums for a KPI report, per month (`store::report::kpi_facts`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KpiFacts {
    /// Per month and transaction kind: transactions, points, purchases, Σ purchase amounts in
    /// minor units (earns with a purchase only).
    pub ledger: Vec<LedgerSums>,
    /// Points expired (swept, net of those an earn reversal took back) per month.
    pub expired: Vec<(Month, i64)>,
    /// Per month: members active, of whom active the month before too (from the month before
    /// the span, so that the first month has its return rate).
    pub active: Vec<(Month, i64, i64)>,
    /// Per month of first transaction: new members, of whom activated.
    pub new: Vec<(Month, i64, i64)>,
    /// (issuer, redeemer, rate as stored, points) over the span.
    pub flows: Vec<(String, String, String, i64)>,
    /// Members per stored tier (None: no tier).
    pub tiers: Vec<(Option<String>, i64)>,
}

/// One month's sums of one transaction kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LedgerSums {
    /// The month.
    pub month: Month,
    /// `earn`, `burn`, `reverse_earn`, `reverse_burn`.
    pub kind: String,
    /// Σ points.
    pub points: i64,
    /// Transactions with a purchase amount.
    pub purchases: i64,
    /// Σ purchase amounts in the currency's minor units.
    pub purchase_minor: i64,
}

/// One month's KPIs (README, "Programme reports", defines each).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct MonthKpis {
    /// YYYY-MM.
    pub month: String,
    /// Members (agreed to analytics) with at least one transaction.
    pub members_active: i64,
    /// Members whose first transaction ever (at the partner, for a partner) was this month.
    pub new_members: i64,
    /// New members with a second transaction within [`ACTIVATION_DAYS`] of their first.
    pub activated: i64,
    /// activated ÷ new_members.
    pub activation_rate: Option<Decimal>,
    /// Active this month and the month before.
    pub returning: i64,
    /// returning ÷ members active the month before.
    pub return_rate: Option<Decimal>,
    /// Earns with a purchase amount.
    pub purchases: i64,
    /// Σ purchase amounts.
    pub purchase_amount: Decimal,
    /// purchase_amount ÷ purchases, to the currency's minor unit.
    pub average_purchase: Option<Decimal>,
    /// Σ points of earns.
    pub points_issued: i64,
    /// Σ points of burns (captures included).
    pub points_redeemed: i64,
    /// Σ points swept as breakage (of the partner's issue, for a partner).
    pub points_expired: i64,
    /// Σ points of earn reversals.
    pub points_reversed_earn: i64,
    /// Σ points of burn reversals.
    pub points_reversed_burn: i64,
    /// points_redeemed ÷ points_issued.
    pub redemption_rate: Option<Decimal>,
    /// points_expired ÷ points_issued.
    pub breakage_rate: Option<Decimal>,
}

/// One cell of the flow matrix over the span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    /// Who issued the points.
    pub issuer: String,
    /// Where they were spent.
    pub redeemer: String,
    /// Points, net of burn reversals.
    pub points: i64,
    /// Σ points × rate.
    pub amount: Decimal,
}

/// Members per tier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierCount {
    /// The tier; empty: none.
    pub tier: String,
    /// Members.
    pub members: i64,
}

/// A KPI report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// First month.
    pub from_month: String,
    /// Last month.
    pub to_month: String,
    /// The partner; empty: the coalition.
    pub partner: String,
    /// ISO 4217.
    pub currency: String,
    /// The coalition's time zone (business days are named in it).
    pub time_zone: String,
    /// The months in order.
    pub months: Vec<MonthKpis>,
    /// Flows, largest first.
    pub flows: Vec<Flow>,
    /// Tiers by name.
    pub tiers: Vec<TierCount>,
    /// RFC 3339.
    pub generated_at: String,
}

/// A cohort: members by month of first earn and how many were active k months later.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    /// YYYY-MM of the first earn.
    pub month: String,
    /// Members of the cohort.
    pub members: i64,
    /// active[k]: members of the cohort active k months after (active[0] = members).
    pub active: Vec<i64>,
}

/// The cohort table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohorts {
    /// First cohort month.
    pub from_month: String,
    /// Last cohort month (and last month of activity counted).
    pub to_month: String,
    /// The partner; empty: the coalition.
    pub partner: String,
    /// Cohorts in order.
    pub cohorts: Vec<Cohort>,
    /// RFC 3339.
    pub generated_at: String,
}

/// `n ÷ d` to [`RATE_DP`] digits, `None` when `d` is 0.
pub fn rate(n: i64, d: i64) -> Option<Decimal> {
    (d != 0).then(|| {
        (Decimal::from(n) / Decimal::from(d))
            .round_dp_with_strategy(RATE_DP, RoundingStrategy::MidpointAwayFromZero)
            .normalize()
    })
}

/// The months' KPIs from the store's sums.
pub fn month_kpis(span: Span, facts: &KpiFacts, minor_units: u32) -> Vec<MonthKpis> {
    let mut out: BTreeMap<Month, MonthKpis> = span
        .months()
        .map(|m| {
            (
                m,
                MonthKpis {
                    month: m.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut minor: BTreeMap<Month, i64> = BTreeMap::new();
    for s in &facts.ledger {
        let Some(k) = out.get_mut(&s.month) else {
            continue;
        };
        match s.kind.as_str() {
            "earn" => {
                k.points_issued += s.points;
                k.purchases += s.purchases;
                *minor.entry(s.month).or_default() += s.purchase_minor;
            }
            "burn" => k.points_redeemed += s.points,
            "reverse_earn" => k.points_reversed_earn += s.points,
            "reverse_burn" => k.points_reversed_burn += s.points,
            _ => {}
        }
    }
    for &(m, p) in &facts.expired {
        if let Some(k) = out.get_mut(&m) {
            k.points_expired += p;
        }
    }
    let mut active_before: BTreeMap<Month, i64> = BTreeMap::new();
    for &(m, a, r) in &facts.active {
        active_before.insert(m.plus(1), a);
        if let Some(k) = out.get_mut(&m) {
            k.members_active = a;
            k.returning = r;
        }
    }
    for &(m, n, a) in &facts.new {
        if let Some(k) = out.get_mut(&m) {
            k.new_members = n;
            k.activated = a;
        }
    }
    for (m, k) in out.iter_mut() {
        let cents = minor.get(m).copied().unwrap_or(0);
        k.purchase_amount = Decimal::new(cents, minor_units);
        k.average_purchase = (k.purchases != 0).then(|| {
            (k.purchase_amount / Decimal::from(k.purchases))
                .round_dp_with_strategy(minor_units, RoundingStrategy::MidpointAwayFromZero)
        });
        k.activation_rate = rate(k.activated, k.new_members);
        k.return_rate = rate(k.returning, active_before.get(m).copied().unwrap_or(0));
        k.redemption_rate = rate(k.points_redeemed, k.points_issued);
        k.breakage_rate = rate(k.points_expired, k.points_issued);
    }
    out.into_values().collect()
}

/// The flow matrix from the store's cells: money summed per pair exactly, largest first.
pub fn flows(cells: &[(String, String, String, i64)]) -> Result<Vec<Flow>, String> {
    let mut pairs: BTreeMap<(String, String), (i64, Decimal)> = BTreeMap::new();
    for (issuer, redeemer, rate, points) in cells {
        let r: Decimal = rate
            .parse()
            .map_err(|_| format!("cycle_matrix.rate holds {rate:?}"))?;
        let e = pairs.entry((issuer.clone(), redeemer.clone())).or_default();
        e.0 =
            e.0.checked_add(*points)
                .ok_or_else(|| format!("points of {issuer} → {redeemer} overflow"))?;
        e.1 += Decimal::from(*points) * r;
    }
    let mut v: Vec<Flow> = pairs
        .into_iter()
        .filter(|(_, (p, _))| *p != 0)
        .map(|((issuer, redeemer), (points, amount))| Flow {
            issuer,
            redeemer,
            points,
            amount: amount.normalize(),
        })
        .collect();
    v.sort_by(|a, b| {
        b.points
            .cmp(&a.points)
            .then_with(|| (&a.issuer, &a.redeemer).cmp(&(&b.issuer, &b.redeemer)))
    });
    Ok(v)
}

/// Cohorts from the store's cells (cohort month, months since, members active).
pub fn cohorts(span: Span, cells: &[(Month, i64, i64)]) -> Vec<Cohort> {
    let mut by: BTreeMap<Month, Vec<i64>> = BTreeMap::new();
    for &(m, k, n) in cells {
        if m < span.from || m > span.to || k < 0 || m.plus(k) > span.to {
            continue;
        }
        let row = by
            .entry(m)
            .or_insert_with(|| vec![0; (span.to.0 - m.0 + 1) as usize]);
        if let Some(slot) = row.get_mut(k as usize) {
            *slot = n;
        }
    }
    by.into_iter()
        .map(|(m, active)| Cohort {
            month: m.to_string(),
            members: active.first().copied().unwrap_or(0),
            active,
        })
        .collect()
}

/// One KPI as the renderings show it: its key (CSV header, JSON field), its label, and how to
/// read it off a month.
pub struct Kpi {
    /// CSV header and JSON field.
    pub key: &'static str,
    /// What a person reads.
    pub label: &'static str,
    /// The value as text ("" when undefined).
    pub text: fn(&MonthKpis) -> String,
    /// The value as a number for charts (None when undefined).
    pub value: fn(&MonthKpis) -> Option<f64>,
    /// A rate (shown as a percentage in HTML and tables).
    pub is_rate: bool,
}

fn opt(d: &Option<Decimal>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

fn num(d: &Option<Decimal>) -> Option<f64> {
    // Charts only: the figures themselves are always the exact decimal text.
    d.and_then(|d| d.to_string().parse().ok())
}

macro_rules! count {
    ($key:ident, $label:expr) => {
        Kpi {
            key: stringify!($key),
            label: $label,
            text: |k| k.$key.to_string(),
            value: |k| Some(k.$key as f64),
            is_rate: false,
        }
    };
}

macro_rules! ratio {
    ($key:ident, $label:expr) => {
        Kpi {
            key: stringify!($key),
            label: $label,
            text: |k| opt(&k.$key),
            value: |k| num(&k.$key),
            is_rate: true,
        }
    };
}

/// Every KPI of a month, in the order every rendering shows them.
pub static KPIS: &[Kpi] = &[
    count!(members_active, "Members active"),
    count!(new_members, "New members"),
    count!(activated, "Activated (2nd transaction ≤ 30 days)"),
    ratio!(activation_rate, "Activation rate"),
    count!(returning, "Returning members"),
    ratio!(return_rate, "Return rate"),
    count!(purchases, "Purchases"),
    Kpi {
        key: "purchase_amount",
        label: "Purchase amount",
        text: |k| k.purchase_amount.to_string(),
        value: |k| k.purchase_amount.to_string().parse().ok(),
        is_rate: false,
    },
    Kpi {
        key: "average_purchase",
        label: "Average purchase",
        text: |k| opt(&k.average_purchase),
        value: |k| num(&k.average_purchase),
        is_rate: false,
    },
    count!(points_issued, "Points issued"),
    count!(points_redeemed, "Points redeemed"),
    count!(points_expired, "Points expired"),
    count!(points_reversed_earn, "Points reversed (earns)"),
    count!(points_reversed_burn, "Points reversed (burns)"),
    ratio!(redemption_rate, "Redemption rate"),
    ratio!(breakage_rate, "Breakage rate"),
];

/// The months as CSV: a header `month,<kpi keys>`, a row per month.
pub fn csv(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["month"];
    header.extend(KPIS.iter().map(|k| k.key));
    // Writing to a Vec cannot fail; an error here would be a bug in the csv crate.
    let _ = w.write_record(&header);
    for m in &report.months {
        let mut row = vec![m.month.clone()];
        row.extend(KPIS.iter().map(|k| (k.text)(m)));
        let _ = w.write_record(&row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// The cohort table as CSV: `cohort,members,m0,m1,…` (members active k months later).
pub fn cohorts_csv(c: &Cohorts) -> String {
    let width = c.cohorts.iter().map(|c| c.active.len()).max().unwrap_or(0);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["cohort".to_string(), "members".to_string()];
    header.extend((0..width).map(|k| format!("m{k}")));
    let _ = w.write_record(&header);
    for row in &c.cohorts {
        let mut r = vec![row.month.clone(), row.members.to_string()];
        r.extend((0..width).map(|k| row.active.get(k).map(|n| n.to_string()).unwrap_or_default()));
        let _ = w.write_record(&r);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// The report as a readable table: KPIs down, months across, then flows and tiers.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let who = if report.partner.is_empty() {
        "the coalition".to_string()
    } else {
        format!("partner {}", report.partner)
    };
    let _ = writeln!(
        s,
        "Programme KPIs of {who}, {} to {} (business days in {}; amounts in {})",
        report.from_month, report.to_month, report.time_zone, report.currency
    );
    let _ = write!(s, "{:<40}", "");
    for m in &report.months {
        let _ = write!(s, "{:>12}", m.month);
    }
    s.push('\n');
    for k in KPIS {
        let _ = write!(s, "{:<40}", k.label);
        for m in &report.months {
            let _ = write!(s, "{:>12}", shown(k, m));
        }
        s.push('\n');
    }
    if !report.flows.is_empty() {
        let _ = writeln!(s, "\nFlows (issued by → redeemed at): points, amount");
        for f in &report.flows {
            let _ = writeln!(
                s,
                "  {:<16} → {:<16} {:>12} {:>14}",
                f.issuer, f.redeemer, f.points, f.amount
            );
        }
    }
    if !report.tiers.is_empty() {
        let _ = writeln!(s, "\nMembers by tier now");
        for t in &report.tiers {
            let name = if t.tier.is_empty() { "(none)" } else { &t.tier };
            let _ = writeln!(s, "  {:<16} {:>12}", name, t.members);
        }
    }
    s
}

/// A KPI of a month as a person reads it: rates as percentages, "–" when undefined.
pub fn shown(k: &Kpi, m: &MonthKpis) -> String {
    let t = (k.text)(m);
    if t.is_empty() {
        return "–".into();
    }
    if k.is_rate
        && let Ok(d) = t.parse::<Decimal>()
    {
        return format!("{}%", (d * Decimal::from(100)).round_dp(2).normalize());
    }
    t
}

/// The cohort table as text: share of each cohort active k months later.
pub fn cohorts_table(c: &Cohorts) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let width = c.cohorts.iter().map(|c| c.active.len()).max().unwrap_or(0);
    let _ = write!(s, "{:<10}{:>10}", "cohort", "members");
    for k in 0..width {
        let _ = write!(s, "{:>8}", format!("+{k}"));
    }
    s.push('\n');
    for row in &c.cohorts {
        let _ = write!(s, "{:<10}{:>10}", row.month, row.members);
        for n in &row.active {
            let share = rate(*n, row.members)
                .map(|r| format!("{}%", (r * Decimal::from(100)).round_dp(0)))
                .unwrap_or_else(|| "–".into());
            let _ = write!(s, "{share:>8}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_print_and_step() {
        let m = Month::parse("2026-01").unwrap();
        assert_eq!(m.to_string(), "2026-01");
        assert_eq!(m.plus(-1).to_string(), "2025-12");
        assert_eq!(m.plus(12).first_day(), "2027-01-01");
        assert_eq!(Month::parse("2026-13"), None);
        assert_eq!(Month::parse("26-01"), None);
        assert!(matches!(
            Span::parse("2026-03", "2026-01"),
            Err(SpanError::Reversed { .. })
        ));
        assert_eq!(
            Span::parse("2020-01", "2026-01"),
            Err(SpanError::TooLong(73))
        );
    }

    #[test]
    fn rates_are_exact_to_four_digits_and_absent_without_a_denominator() {
        assert_eq!(rate(1, 3), Some(Decimal::new(3333, 4)));
        assert_eq!(rate(2, 3), Some(Decimal::new(6667, 4)));
        assert_eq!(rate(1, 0), None);
        assert_eq!(rate(2, 4).unwrap().to_string(), "0.5");
    }

    #[test]
    fn cohorts_keep_only_months_inside_the_span() {
        let span = Span::parse("2026-01", "2026-03").unwrap();
        let m = |s| Month::parse(s).unwrap();
        let c = cohorts(
            span,
            &[
                (m("2026-01"), 0, 4),
                (m("2026-01"), 2, 1),
                (m("2026-03"), 0, 2),
                (m("2026-03"), 1, 9),
            ],
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].active, vec![4, 0, 1]);
        assert_eq!(c[1].active, vec![2]);
    }
}
