//! `GetProgrammeReport` and `GetCohorts`, once for the finance API (any partner or the
//! coalition) and the partner API (the caller's own): the store sums (`store::report`), the pure
//! `report` module divides, and here the result becomes its wire form and back (the CLI renders
//! the domain form).

use crate::report::{self, Cohort, Cohorts, Flow, MonthKpis, Report, Span, TierCount};
use crate::services::error::ServiceError;
use crate::services::shared::Shared;
use crate::store::report::KpiQuery;
use coalition_proto::v1 as pb;
use rust_decimal::Decimal;

/// The checked query of a request; `partner` overrides the request's (the partner API).
async fn query(
    shared: &Shared,
    r: &pb::ProgrammeReportRequest,
    partner: Option<&str>,
) -> Result<KpiQuery, ServiceError> {
    let span = Span::parse(&r.from_month, &r.to_month).map_err(|e| {
        let field = match e {
            report::SpanError::NotAMonth(ref s) if *s == r.to_month => "to_month",
            report::SpanError::NotAMonth(_) => "from_month",
            _ => "to_month",
        };
        ServiceError::field(field, "INVALID_MONTHS", e.to_string())
    })?;
    let partner = match partner {
        Some(p) => Some(p.to_string()),
        None if r.partner.trim().is_empty() => None,
        None => {
            let p = r.partner.trim();
            let known = shared
                .store
                .partners()
                .await?
                .into_iter()
                .any(|x| x.id == p);
            if !known {
                return Err(ServiceError::NotFound {
                    reason: "UNKNOWN_PARTNER",
                    message: format!(
                        "no partner {p:?} in the coalition; leave partner empty for the whole coalition"
                    ),
                });
            }
            Some(p.to_string())
        }
    };
    // Each month's first business day opens at this instant (members' first instants are
    // bucketed by month with it, as transactions are by the month of their cycle).
    let cycles = shared.config.cycles();
    let mut opens = Vec::new();
    for m in span.from.0..=span.to.0 + 1 {
        let day = chrono::NaiveDate::from_ymd_opt(
            m.div_euclid(12) as i32,
            (m.rem_euclid(12) + 1) as u32,
            1,
        );
        match day.map(|d| cycles.open(d)) {
            Some(Ok(at)) => opens.push(at),
            // Outside the calendar: the member KPIs fall back to the transactions.
            _ => break,
        }
    }
    let now = shared.clock.now();
    let now_month = chrono::DateTime::from_timestamp_micros(now)
        .map(|t| report::Month::of(t.with_timezone(&shared.config.time_zone).date_naive()))
        .unwrap_or(span.to);
    Ok(KpiQuery {
        span,
        partner,
        minor_units: shared.config.currency.minor_units,
        tiers: shared.config.ladder.is_some(),
        opens,
        now_month,
    })
}

/// The KPI report of a request.
pub async fn programme_report(
    shared: &Shared,
    r: &pb::ProgrammeReportRequest,
    partner: Option<&str>,
) -> Result<pb::ProgrammeReport, ServiceError> {
    let q = query(shared, r, partner).await?;
    let facts = shared.store.kpi_facts(&q).await?;
    let flows = report::flows(&facts.flows)
        .map_err(|e| ServiceError::Store(crate::store::StoreError::Corrupt(e)))?;
    // A member without a stored tier is on the ladder's first rung (nothing was ever promoted).
    let base = shared
        .config
        .ladder
        .as_ref()
        .and_then(|l| l.tiers.first())
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for (t, n) in &facts.tiers {
        *by.entry(t.clone().unwrap_or_else(|| base.clone()))
            .or_default() += n;
    }
    let tiers: Vec<TierCount> = by
        .into_iter()
        .map(|(tier, members)| TierCount { tier, members })
        .collect();
    let report = Report {
        from_month: q.span.from.to_string(),
        to_month: q.span.to.to_string(),
        partner: q.partner.clone().unwrap_or_default(),
        currency: shared.config.currency.code.to_string(),
        time_zone: shared.config.time_zone.name().to_string(),
        months: report::month_kpis(q.span, &facts, q.minor_units),
        flows,
        tiers,
        generated_at: crate::clock::rfc3339(shared.clock.now()),
    };
    Ok(to_pb(&report))
}

/// The cohort table of a request.
pub async fn cohorts(
    shared: &Shared,
    r: &pb::ProgrammeReportRequest,
    partner: Option<&str>,
) -> Result<pb::Cohorts, ServiceError> {
    let q = query(shared, r, partner).await?;
    let cells = shared.store.cohort_cells(&q).await?;
    Ok(pb::Cohorts {
        from_month: q.span.from.to_string(),
        to_month: q.span.to.to_string(),
        partner: q.partner.unwrap_or_default(),
        cohorts: report::cohorts(q.span, &cells)
            .into_iter()
            .map(|c| pb::Cohort {
                month: c.month,
                members: c.members,
                active: c.active,
            })
            .collect(),
        generated_at: crate::clock::rfc3339(shared.clock.now()),
    })
}

fn text(d: Option<Decimal>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

/// The wire form of a report.
pub fn to_pb(r: &Report) -> pb::ProgrammeReport {
    pb::ProgrammeReport {
        from_month: r.from_month.clone(),
        to_month: r.to_month.clone(),
        partner: r.partner.clone(),
        currency: r.currency.clone(),
        time_zone: r.time_zone.clone(),
        months: r
            .months
            .iter()
            .map(|m| pb::MonthKpis {
                month: m.month.clone(),
                members_active: m.members_active,
                new_members: m.new_members,
                activated: m.activated,
                activation_rate: text(m.activation_rate),
                returning: m.returning,
                return_rate: text(m.return_rate),
                purchases: m.purchases,
                purchase_amount: m.purchase_amount.to_string(),
                average_purchase: text(m.average_purchase),
                points_issued: m.points_issued,
                points_redeemed: m.points_redeemed,
                points_expired: m.points_expired,
                points_reversed_earn: m.points_reversed_earn,
                points_reversed_burn: m.points_reversed_burn,
                redemption_rate: text(m.redemption_rate),
                breakage_rate: text(m.breakage_rate),
            })
            .collect(),
        flows: r
            .flows
            .iter()
            .map(|f| pb::FlowCell {
                issuer: f.issuer.clone(),
                redeemer: f.redeemer.clone(),
                points: f.points,
                amount: f.amount.to_string(),
            })
            .collect(),
        tiers: r
            .tiers
            .iter()
            .map(|t| pb::TierCount {
                tier: t.tier.clone(),
                members: t.members,
            })
            .collect(),
        generated_at: r.generated_at.clone(),
    }
}

fn decimal(field: &str, s: &str) -> Result<Option<Decimal>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("the daemon sent {field} {s:?}, not a decimal"))
}

/// The domain form of a report read from the wire (the CLI renders it).
pub fn from_pb(r: &pb::ProgrammeReport) -> Result<Report, String> {
    let mut months = Vec::with_capacity(r.months.len());
    for m in &r.months {
        months.push(MonthKpis {
            month: m.month.clone(),
            members_active: m.members_active,
            new_members: m.new_members,
            activated: m.activated,
            activation_rate: decimal("activation_rate", &m.activation_rate)?,
            returning: m.returning,
            return_rate: decimal("return_rate", &m.return_rate)?,
            purchases: m.purchases,
            purchase_amount: decimal("purchase_amount", &m.purchase_amount)?.unwrap_or_default(),
            average_purchase: decimal("average_purchase", &m.average_purchase)?,
            points_issued: m.points_issued,
            points_redeemed: m.points_redeemed,
            points_expired: m.points_expired,
            points_reversed_earn: m.points_reversed_earn,
            points_reversed_burn: m.points_reversed_burn,
            redemption_rate: decimal("redemption_rate", &m.redemption_rate)?,
            breakage_rate: decimal("breakage_rate", &m.breakage_rate)?,
        });
    }
    let mut flows = Vec::with_capacity(r.flows.len());
    for f in &r.flows {
        flows.push(Flow {
            issuer: f.issuer.clone(),
            redeemer: f.redeemer.clone(),
            points: f.points,
            amount: decimal("amount", &f.amount)?.unwrap_or_default(),
        });
    }
    Ok(Report {
        from_month: r.from_month.clone(),
        to_month: r.to_month.clone(),
        partner: r.partner.clone(),
        currency: r.currency.clone(),
        time_zone: r.time_zone.clone(),
        months,
        flows,
        tiers: r
            .tiers
            .iter()
            .map(|t| TierCount {
                tier: t.tier.clone(),
                members: t.members,
            })
            .collect(),
        generated_at: r.generated_at.clone(),
    })
}

/// The domain form of a cohort table read from the wire.
pub fn cohorts_from_pb(c: &pb::Cohorts) -> Cohorts {
    Cohorts {
        from_month: c.from_month.clone(),
        to_month: c.to_month.clone(),
        partner: c.partner.clone(),
        cohorts: c
            .cohorts
            .iter()
            .map(|c| Cohort {
                month: c.month.clone(),
                members: c.members,
                active: c.active.clone(),
            })
            .collect(),
        generated_at: c.generated_at.clone(),
    }
}
