//! The programme report's sums, in SQL once for both backends: every figure is an aggregate the
//! database computes (`GROUP BY` month of the business day), never rows loaded into memory. A
//! transaction's month is the month of its cycle (its business day in the coalition's time
//! zone), so a report adds up exactly as the settlements and statements of those days.
//! Member counts take only members who agreed to `analytics` (README, "Consent").

use super::error::StoreError;
use crate::ledger::{Activity, Micros};
use crate::report::{KpiFacts, LedgerSums, Month, Span};

/// What to sum.
#[derive(Debug, Clone)]
pub struct KpiQuery {
    /// The months.
    pub span: Span,
    /// One partner, or the coalition.
    pub partner: Option<String>,
    /// The currency's minor-unit digits (purchase amounts are summed in minor units, exactly).
    pub minor_units: u32,
    /// Whether tiers run (the tier distribution is read only then).
    pub tiers: bool,
    /// The opening instant of each month's first business day, from the span's first month to
    /// the month after its last (bucketing members' first instants by month).
    pub opens: Vec<Micros>,
    /// The current month: the coalition's member KPIs read the members' kept activity when the
    /// span lies within what it keeps, and the transactions otherwise.
    pub now_month: Month,
}

impl KpiQuery {
    /// Whether the coalition's member KPIs can come from the members' kept activity: no partner,
    /// and every month of the span (and the one before) within [`Activity::SPAN`] of now.
    fn reads_kept_activity(&self) -> bool {
        self.partner.is_none()
            && self.opens.len() as i64 == self.span.to.0 - self.span.from.0 + 2
            && self.now_month.0 - (self.span.from.0 - 1) <= Activity::SPAN
    }

    /// `CASE` of a member's first instant → its month number (NULL outside the span).
    fn first_month_case(&self) -> String {
        let mut c = String::from("CAST(CASE");
        for (i, m) in self.span.months().enumerate() {
            c.push_str(&format!(
                " WHEN first_seen >= {} AND first_seen < {} THEN {}",
                self.opens[i],
                self.opens[i + 1],
                m.0
            ));
        }
        c.push_str(" END AS BIGINT)");
        c
    }
}

/// The SQL test of "the member had a transaction in month `m`", from its kept activity.
fn active_in(m: Month) -> String {
    format!(
        "(activity_mask <> 0 AND activity_month - {m} BETWEEN 0 AND {span} \
         AND ((activity_mask >> CAST(activity_month - {m} AS INTEGER)) & 1) = 1)",
        m = m.0,
        span = Activity::SPAN
    )
}

/// Sets every member's kept activity from its transactions (migration 0017 runs the same; the
/// bench's preload runs these after writing its rows).
pub const BACKFILL: [&str; 4] = [
    "UPDATE members SET activity_month = a.m FROM (SELECT member_id, MAX((CAST(substr(cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(cycle, 6, 2) AS BIGINT) - 1)) AS m FROM transactions GROUP BY member_id) a WHERE a.member_id = members.member_id",
    "UPDATE members SET activity_mask = a.mask FROM (SELECT t.member_id, CAST(SUM(DISTINCT CAST(1 AS BIGINT) << CAST(x.activity_month - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) AS INTEGER)) AS BIGINT) AS mask FROM transactions t JOIN members x ON x.member_id = t.member_id WHERE x.activity_month - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) <= 62 GROUP BY t.member_id) a WHERE a.member_id = members.member_id",
    "UPDATE members SET second_at = s.at FROM (SELECT member_id, accepted_at AS at FROM (SELECT member_id, accepted_at, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY accepted_at, id) AS n FROM transactions) r WHERE n = 2) s WHERE s.member_id = members.member_id",
    "UPDATE members SET first_at = s.at FROM (SELECT member_id, MIN(accepted_at) AS at FROM transactions GROUP BY member_id) s WHERE s.member_id = members.member_id",
];

/// Members counted in member KPIs: those whose analytics consent is granted now.
const CONSENTED: &str =
    "member_id IN (SELECT member_id FROM consents WHERE purpose = 'analytics' AND granted)";

/// The month number of a cycle column (`YYYY-MM-DD`), as [`Month`] counts.
fn month_of(col: &str) -> String {
    format!("(CAST(substr({col}, 1, 4) AS BIGINT) * 12 + CAST(substr({col}, 6, 2) AS BIGINT) - 1)")
}

/// The partner condition on `col`, bound as parameter `$n`, or nothing.
fn partner_clause(q: &KpiQuery, col: &str, n: usize) -> String {
    if q.partner.is_some() {
        format!(" AND {col} = ${n}")
    } else {
        String::new()
    }
}

/// The report's SQL, generic over the sqlx database.
pub struct ReportSql<DB>(std::marker::PhantomData<DB>);

impl<DB> ReportSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Every sum of a KPI report (on a read connection: a few aggregate queries).
    pub async fn kpi_facts(
        conn: &mut DB::Connection,
        q: &KpiQuery,
        tier_sql: &str,
    ) -> Result<KpiFacts, StoreError> {
        use sqlx::Row;
        let from = q.span.from.first_day();
        let before = q.span.from.plus(-1).first_day();
        let until = q.span.to.plus(1).first_day();
        let p = q.partner.clone().unwrap_or_default();
        let scale = 10_i64.pow(q.minor_units.min(6));
        let mut facts = KpiFacts::default();

        let sql = format!(
            "SELECT {mi}, kind, CAST(SUM(points) AS BIGINT), \
             CAST(SUM(CASE WHEN purchase_amount IS NOT NULL THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN purchase_amount IS NOT NULL \
                 THEN ROUND(CAST(purchase_amount AS DOUBLE PRECISION) * {scale}) ELSE 0 END) AS BIGINT) \
             FROM transactions WHERE cycle >= $1 AND cycle < $2{pc} GROUP BY 1, 2",
            mi = month_of("cycle"),
            pc = partner_clause(q, "partner_id", 3),
        );
        let mut query = sqlx::query(&sql).bind(from.clone()).bind(until.clone());
        if q.partner.is_some() {
            query = query.bind(p.clone());
        }
        for r in query.fetch_all(&mut *conn).await? {
            facts.ledger.push(LedgerSums {
                month: Month(r.try_get(0)?),
                kind: r.try_get(1)?,
                points: r.try_get(2)?,
                purchases: r.try_get(3)?,
                purchase_minor: r.try_get(4)?,
            });
        }

        let sql = format!(
            "SELECT {mi}, CAST(SUM(points) AS BIGINT) FROM breakage \
             WHERE cycle >= $1 AND cycle < $2{pc} GROUP BY 1",
            mi = month_of("cycle"),
            pc = partner_clause(q, "issuer", 3),
        );
        let mut query = sqlx::query(&sql).bind(from.clone()).bind(until.clone());
        if q.partner.is_some() {
            query = query.bind(p.clone());
        }
        for r in query.fetch_all(&mut *conn).await? {
            facts.expired.push((Month(r.try_get(0)?), r.try_get(1)?));
        }

        if q.reads_kept_activity() {
            let (active, new) = Self::members_active_and_new(conn, q).await?;
            facts.active = active;
            facts.new = new;
        } else {
            // Active members per month and, of them, those active the month before.
            let sql = format!(
                "WITH am AS (SELECT DISTINCT {mi} AS mi, member_id FROM transactions \
                   WHERE cycle >= $1 AND cycle < $2{pc} AND {CONSENTED}) \
                 SELECT a.mi, COUNT(*), COUNT(b.member_id) FROM am a \
                 LEFT JOIN am b ON b.member_id = a.member_id AND b.mi = a.mi - 1 GROUP BY a.mi",
                mi = month_of("cycle"),
                pc = partner_clause(q, "partner_id", 3),
            );
            let mut query = sqlx::query(&sql).bind(before).bind(until.clone());
            if q.partner.is_some() {
                query = query.bind(p.clone());
            }
            for r in query.fetch_all(&mut *conn).await? {
                facts
                    .active
                    .push((Month(r.try_get(0)?), r.try_get(1)?, r.try_get(2)?));
            }

            // New members (first transaction ever, at the partner for a partner) and, of them, those
            // with a second transaction within the activation window — which may lie after the span.
            let window = crate::report::ACTIVATION_DAYS * 86_400_000_000;
            let sql = format!(
                "WITH r AS (SELECT member_id, cycle, accepted_at, \
                     ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY accepted_at, id) AS n \
                   FROM transactions WHERE {CONSENTED}{pc}), \
                 f AS (SELECT member_id, MIN(CASE WHEN n = 1 THEN cycle END) AS c1, \
                     MIN(CASE WHEN n = 1 THEN accepted_at END) AS a1, \
                     MIN(CASE WHEN n = 2 THEN accepted_at END) AS a2 FROM r WHERE n <= 2 GROUP BY member_id) \
                 SELECT {mi}, COUNT(*), \
                   CAST(SUM(CASE WHEN a2 IS NOT NULL AND a2 - a1 <= {window} THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM f WHERE c1 >= $1 AND c1 < $2 GROUP BY 1",
                mi = month_of("c1"),
                pc = partner_clause(q, "partner_id", 3),
            );
            let mut query = sqlx::query(&sql).bind(from.clone()).bind(until.clone());
            if q.partner.is_some() {
                query = query.bind(p.clone());
            }
            for r in query.fetch_all(&mut *conn).await? {
                facts
                    .new
                    .push((Month(r.try_get(0)?), r.try_get(1)?, r.try_get(2)?));
            }
        }

        // The flow matrix from the kept gross matrix (cells, not allocations).
        let pc = if q.partner.is_some() {
            " AND (issuer = $3 OR redeemer = $3)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT issuer, redeemer, rate, CAST(SUM(points) AS BIGINT) FROM cycle_matrix \
             WHERE cycle >= $1 AND cycle < $2{pc} GROUP BY issuer, redeemer, rate"
        );
        let mut query = sqlx::query(&sql).bind(from.clone()).bind(until.clone());
        if q.partner.is_some() {
            query = query.bind(p.clone());
        }
        for r in query.fetch_all(&mut *conn).await? {
            facts
                .flows
                .push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
        }

        if q.tiers {
            let rows = if q.partner.is_some() {
                let sql = format!(
                    "SELECT {tier_sql}, COUNT(*) FROM members WHERE {CONSENTED} AND member_id IN \
                     (SELECT member_id FROM transactions WHERE cycle >= $1 AND cycle < $2 AND partner_id = $3) \
                     GROUP BY 1"
                );
                sqlx::query(&sql)
                    .bind(from)
                    .bind(until)
                    .bind(p)
                    .fetch_all(&mut *conn)
                    .await?
            } else {
                let sql = format!(
                    "SELECT {tier_sql}, COUNT(*) FROM members WHERE {CONSENTED} GROUP BY 1"
                );
                sqlx::query(&sql).fetch_all(&mut *conn).await?
            };
            for r in rows {
                facts.tiers.push((r.try_get(0)?, r.try_get(1)?));
            }
        }
        Ok(facts)
    }

    /// The coalition's members active (and returning) per month and new (and activated) per
    /// month, from the members' rows: one scan of `members` each, whatever the ledger's size.
    async fn members_active_and_new(
        conn: &mut DB::Connection,
        q: &KpiQuery,
    ) -> Result<(Vec<(Month, i64, i64)>, Vec<(Month, i64, i64)>), StoreError> {
        use sqlx::Row;
        let months: Vec<Month> = (q.span.from.0 - 1..=q.span.to.0).map(Month).collect();
        let mut cols = Vec::new();
        for &m in &months {
            cols.push(format!(
                "CAST(SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS BIGINT)",
                active_in(m)
            ));
            cols.push(format!(
                "CAST(SUM(CASE WHEN {} AND {} THEN 1 ELSE 0 END) AS BIGINT)",
                active_in(m),
                active_in(m.plus(-1))
            ));
        }
        let sql = format!(
            "SELECT {} FROM members WHERE activity_month >= {} AND {CONSENTED}",
            cols.join(", "),
            q.span.from.0 - 1
        );
        let row = sqlx::query(&sql).fetch_one(&mut *conn).await?;
        let mut active = Vec::new();
        for (i, &m) in months.iter().enumerate() {
            let a: Option<i64> = row.try_get(2 * i)?;
            let r: Option<i64> = row.try_get(2 * i + 1)?;
            active.push((m, a.unwrap_or(0), r.unwrap_or(0)));
        }
        let window = crate::report::ACTIVATION_DAYS * 86_400_000_000;
        let sql = format!(
            "SELECT {case} AS fm, COUNT(*), CAST(SUM(CASE WHEN second_at IS NOT NULL \
             AND second_at - first_seen <= {window} THEN 1 ELSE 0 END) AS BIGINT) FROM members \
             WHERE first_seen >= {lo} AND first_seen < {hi} AND {CONSENTED} GROUP BY 1",
            case = q.first_month_case(),
            lo = q.opens[0],
            hi = q.opens[q.opens.len() - 1],
        );
        let mut new = Vec::new();
        for r in sqlx::query(&sql).fetch_all(&mut *conn).await? {
            if let Some(m) = r.try_get::<Option<i64>, _>(0)? {
                new.push((Month(m), r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok((active, new))
    }

    /// Cohort cells: (month of first earn, months since, members of it active then), for cohorts
    /// and activity inside the span.
    pub async fn cohort_cells(
        conn: &mut DB::Connection,
        q: &KpiQuery,
    ) -> Result<Vec<(Month, i64, i64)>, StoreError> {
        use sqlx::Row;
        if q.reads_kept_activity() {
            // A member's first earn is its first transaction: its row's first instant.
            let months: Vec<Month> = q.span.months().collect();
            let cols: Vec<String> = months
                .iter()
                .map(|&m| {
                    format!(
                        "CAST(SUM(CASE WHEN {} THEN 1 ELSE 0 END) AS BIGINT)",
                        active_in(m)
                    )
                })
                .collect();
            let sql = format!(
                "SELECT {case} AS fm, {cols} FROM members \
                 WHERE first_seen >= {lo} AND first_seen < {hi} AND {CONSENTED} GROUP BY 1",
                case = q.first_month_case(),
                cols = cols.join(", "),
                lo = q.opens[0],
                hi = q.opens[q.opens.len() - 1],
            );
            let mut out = Vec::new();
            for r in sqlx::query(&sql).fetch_all(&mut *conn).await? {
                let Some(cm) = r.try_get::<Option<i64>, _>(0)? else {
                    continue;
                };
                for (i, &m) in months.iter().enumerate() {
                    let n: Option<i64> = r.try_get(i + 1)?;
                    if m.0 >= cm {
                        out.push((Month(cm), m.0 - cm, n.unwrap_or(0)));
                    }
                }
            }
            return Ok(out);
        }
        let sql = format!(
            "WITH c AS (SELECT member_id, MIN({mi}) AS cm FROM transactions \
               WHERE kind = 'earn' AND {CONSENTED}{pc} GROUP BY member_id), \
             am AS (SELECT DISTINCT {mi} AS mi, member_id FROM transactions \
               WHERE cycle >= $1 AND cycle < $2 AND {CONSENTED}{pc}) \
             SELECT c.cm, am.mi - c.cm, COUNT(*) FROM c JOIN am ON am.member_id = c.member_id \
             WHERE c.cm >= $3 AND am.mi >= c.cm GROUP BY 1, 2",
            mi = month_of("cycle"),
            pc = partner_clause(q, "partner_id", 4),
        );
        let mut query = sqlx::query(&sql)
            .bind(q.span.from.first_day())
            .bind(q.span.to.plus(1).first_day())
            .bind(q.span.from.0);
        if let Some(p) = &q.partner {
            query = query.bind(p.clone());
        }
        let mut out = Vec::new();
        for r in query.fetch_all(&mut *conn).await? {
            out.push((Month(r.try_get(0)?), r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }
}
