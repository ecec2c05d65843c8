//! Price versions, the partner registry and the issuance rows behind fees: SQL written once for
//! both backends (rates are TEXT decimal strings in these tables on both).

use super::error::StoreError;
use crate::ledger::Micros;
use crate::prices::{PartnerRecord, PriceVersion};
use rust_decimal::Decimal;
use std::str::FromStr;

/// SQL of this module.
pub mod sql {
    /// Every price version.
    pub const PRICES: &str = "SELECT partner_id, effective_from, redemption_rate, issuance_fee, set_at, set_by \
        FROM prices ORDER BY partner_id, effective_from";
    /// Inserts a version; one already taking effect at that instant is replaced only while it is
    /// still in the future ($7 = now).
    pub const UPSERT_FUTURE: &str = "INSERT INTO prices (partner_id, effective_from, redemption_rate, issuance_fee, set_at, set_by) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (partner_id, effective_from) DO UPDATE SET \
        redemption_rate = excluded.redemption_rate, issuance_fee = excluded.issuance_fee, set_at = excluded.set_at, \
        set_by = excluded.set_by WHERE prices.effective_from > $7";
    /// Inserts a version unless one takes effect at that instant already.
    pub const INSERT: &str = "INSERT INTO prices (partner_id, effective_from, redemption_rate, issuance_fee, set_at, set_by) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (partner_id, effective_from) DO NOTHING";
    /// One version.
    pub const ONE: &str = "SELECT partner_id, effective_from, redemption_rate, issuance_fee, set_at, set_by \
        FROM prices WHERE partner_id = $1 AND effective_from = $2";
    /// Registers a partner of the config (or updates what the config says of it).
    pub const UPSERT_PARTNER: &str = "INSERT INTO partners (partner_id, name, kind, iban, bic, liability_value, \
        retired_from, points_expire_on, points_taken_over_at, first_seen, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $9, $9) \
        ON CONFLICT (partner_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, iban = excluded.iban, \
        bic = excluded.bic, liability_value = excluded.liability_value, retired_from = excluded.retired_from, \
        points_expire_on = excluded.points_expire_on, points_taken_over_at = excluded.points_taken_over_at, \
        updated_at = excluded.updated_at";
    /// Every registered partner.
    pub const PARTNERS: &str = "SELECT partner_id, name, kind, iban, bic, liability_value, retired_from, \
        points_expire_on, points_taken_over_at FROM partners ORDER BY partner_id";
    /// Whether some earn or earn reversal may lack its issuance row: one older than the oldest row
    /// (rows appear in id order from the upgrade on, and the backfill fills every older one at
    /// once), a short range read instead of an anti-join over the whole ledger at every start.
    pub const NEEDS_BACKFILL: &str = "SELECT EXISTS (SELECT 1 FROM transactions WHERE kind IN ('earn', 'reverse_earn') \
        AND id < COALESCE((SELECT MIN(txn_id) FROM issuance), 9223372036854775807))";
    /// The issuance row of every earn and earn reversal that has none (accepted before prices had
    /// history): the fee in force at the earn's acceptance, refunded at that fee by its reversals.
    pub const BACKFILL_ISSUANCE: &str = "INSERT INTO issuance (txn_id, cycle, issuer, fee_rate, points) \
        SELECT t.id, t.cycle, t.partner_id, COALESCE((SELECT p.issuance_fee FROM prices p WHERE p.partner_id = t.partner_id \
        AND p.effective_from <= COALESCE(o.accepted_at, t.accepted_at) ORDER BY p.effective_from DESC LIMIT 1), '0'), \
        CASE t.kind WHEN 'earn' THEN t.points ELSE -t.points END \
        FROM transactions t LEFT JOIN transactions o ON o.id = t.original_id \
        WHERE t.kind IN ('earn', 'reverse_earn') AND NOT EXISTS (SELECT 1 FROM issuance i WHERE i.txn_id = t.id) \
        ON CONFLICT (txn_id) DO NOTHING";
    /// A retired issuer's lots expire at $2 at the latest.
    pub const EXPIRE_ISSUER: &str = "UPDATE lots SET expires_at = $2 WHERE issuer = $1 AND (expires_at IS NULL OR expires_at > $2)";
    /// Issuance fees charged on the earns of partner $1 accepted in [$2, $3).
    pub const EARN_FEES_BETWEEN: &str = "SELECT DISTINCT i.fee_rate FROM issuance i JOIN transactions t ON t.id = i.txn_id \
        WHERE t.kind = 'earn' AND t.partner_id = $1 AND t.accepted_at >= $2 AND t.accepted_at < $3";
    /// Rates of the burns redeemed at partner $1 accepted in [$2, $3).
    pub const BURN_RATES_BETWEEN: &str = "SELECT DISTINCT CAST(a.rate AS TEXT) FROM allocations a JOIN transactions t ON t.id = a.txn_id \
        WHERE t.kind = 'burn' AND a.redeemer = $1 AND a.accepted_at >= $2 AND a.accepted_at < $3";
    /// The cycle's issuance per issuer and fee.
    pub const CYCLE_ISSUANCE: &str = "SELECT issuer, fee_rate, CAST(SUM(points) AS BIGINT) FROM issuance WHERE cycle = $1 \
        GROUP BY issuer, fee_rate ORDER BY issuer, fee_rate";
}

/// Issuance checks in SQL, run with the audit's other checks.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "every earn has one issuance row of its cycle, issuer and the points of the partner's lot, every earn reversal of a partner-funded earn one of minus its points (those with operator parts: checked part by part), and nothing else has one",
        "SELECT (SELECT COUNT(*) FROM transactions t LEFT JOIN issuance i ON i.txn_id = t.id LEFT JOIN lots l ON l.id = t.id \
         WHERE t.kind = 'earn' AND (i.txn_id IS NULL OR l.id IS NULL OR i.cycle <> t.cycle OR i.issuer <> t.partner_id \
         OR i.points <> l.points)) \
         + (SELECT COUNT(*) FROM transactions t LEFT JOIN issuance i ON i.txn_id = t.id \
         WHERE t.kind = 'reverse_earn' AND NOT EXISTS (SELECT 1 FROM lots o WHERE o.id = -t.original_id) \
         AND (i.txn_id IS NULL OR i.cycle <> t.cycle OR i.issuer <> t.partner_id OR i.points <> -t.points)) \
         + (SELECT COUNT(*) FROM issuance i LEFT JOIN transactions t ON t.id = i.txn_id \
         WHERE t.id IS NULL OR t.kind NOT IN ('earn', 'reverse_earn'))",
    ),
    (
        "an earn reversal refunds the issuance fee its earn was charged",
        "SELECT COUNT(*) FROM transactions t JOIN issuance i ON i.txn_id = t.id JOIN issuance o ON o.txn_id = t.original_id \
         WHERE t.kind = 'reverse_earn' AND i.fee_rate <> o.fee_rate",
    ),
];

fn decimal(column: &str, s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|_| StoreError::Corrupt(format!("{column} holds {s:?}")))
}

fn date(column: &str, s: Option<String>) -> Result<Option<chrono::NaiveDate>, StoreError> {
    super::model::parse_date(column, s.as_deref())
}

/// The registry and price SQL, generic over the sqlx database.
pub struct RegistrySql<DB>(std::marker::PhantomData<DB>);

impl<DB> RegistrySql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    DB::QueryResult: RowsAffected,
{
    fn version(row: &DB::Row) -> Result<PriceVersion, StoreError> {
        use sqlx::Row;
        Ok(PriceVersion {
            partner: row.try_get(0)?,
            effective_from: row.try_get(1)?,
            redemption_rate: decimal("prices.redemption_rate", &row.try_get::<String, _>(2)?)?,
            issuance_fee: decimal("prices.issuance_fee", &row.try_get::<String, _>(3)?)?,
            set_at: row.try_get(4)?,
            set_by: row.try_get(5)?,
        })
    }

    /// Every price version, per partner oldest first.
    pub async fn price_versions(
        conn: &mut DB::Connection,
    ) -> Result<Vec<PriceVersion>, StoreError> {
        let rows = sqlx::query(sql::PRICES).fetch_all(&mut *conn).await?;
        rows.iter().map(Self::version).collect()
    }

    fn bind_version<'q>(
        q: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
        v: &PriceVersion,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>> {
        q.bind(v.partner.clone())
            .bind(v.effective_from)
            .bind(v.redemption_rate.normalize().to_string())
            .bind(v.issuance_fee.normalize().to_string())
            .bind(v.set_at)
            .bind(v.set_by.clone())
    }

    /// Inserts a version, replacing one at the same instant only while that is in the future.
    pub async fn upsert_future_price(
        conn: &mut DB::Connection,
        v: &PriceVersion,
        now: Micros,
    ) -> Result<(), StoreError> {
        Self::bind_version(sqlx::query(sql::UPSERT_FUTURE), v)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Inserts a version unless one takes effect at that instant; returns the version stored
    /// there now (this one, or the one that was there).
    pub async fn add_price(
        conn: &mut DB::Connection,
        v: &PriceVersion,
    ) -> Result<PriceVersion, StoreError> {
        Self::bind_version(sqlx::query(sql::INSERT), v)
            .execute(&mut *conn)
            .await?;
        let row = sqlx::query(sql::ONE)
            .bind(v.partner.clone())
            .bind(v.effective_from)
            .fetch_one(&mut *conn)
            .await?;
        Self::version(&row)
    }

    /// Registers the config's partners; marks those it no longer names.
    pub async fn sync_partners(
        conn: &mut DB::Connection,
        records: &[PartnerRecord],
        now: Micros,
    ) -> Result<(), StoreError> {
        for p in records {
            sqlx::query(sql::UPSERT_PARTNER)
                .bind(p.id.clone())
                .bind(p.name.clone())
                .bind(p.kind.clone())
                .bind(p.account.as_ref().map(|a| a.iban.clone()))
                .bind(p.account.as_ref().map(|a| a.bic.clone()))
                .bind(p.liability_value.normalize().to_string())
                .bind(p.retired_from.map(|d| d.to_string()))
                .bind(p.points_expire_on.map(|d| d.to_string()))
                .bind(now)
                .bind(p.points_taken_over_at)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Every partner the coalition has had.
    pub async fn partners(conn: &mut DB::Connection) -> Result<Vec<PartnerRecord>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(sql::PARTNERS).fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let name: String = r.try_get(1)?;
                let iban: Option<String> = r.try_get(3)?;
                let bic: Option<String> = r.try_get(4)?;
                Ok(PartnerRecord {
                    account: iban
                        .zip(bic)
                        .map(|(iban, bic)| coalition_clearing::export::Account {
                            name: name.clone(),
                            iban,
                            bic,
                        }),
                    kind: r.try_get(2)?,
                    liability_value: decimal(
                        "partners.liability_value",
                        &r.try_get::<String, _>(5)?,
                    )?,
                    retired_from: date("partners.retired_from", r.try_get(6)?)?,
                    points_expire_on: date("partners.points_expire_on", r.try_get(7)?)?,
                    points_taken_over_at: r.try_get(8)?,
                    id,
                    name,
                })
            })
            .collect()
    }

    /// Gives every earn and earn reversal without an issuance row its row (see
    /// [`sql::BACKFILL_ISSUANCE`]), if any may lack one. Returns how many.
    pub async fn backfill_issuance(conn: &mut DB::Connection) -> Result<u64, StoreError> {
        let needed: bool = sqlx::query_scalar(sql::NEEDS_BACKFILL)
            .fetch_one(&mut *conn)
            .await?;
        if !needed {
            return Ok(0);
        }
        let r = sqlx::query(sql::BACKFILL_ISSUANCE)
            .execute(&mut *conn)
            .await?;
        Ok(sqlx_rows(r))
    }

    /// The start-up sync with the config, all or nothing: registry records, the config's new
    /// price versions (computed against what is stored now, see [`crate::prices::from_config`]),
    /// the issuance backfill, and retired issuers' early expiry.
    pub async fn sync(
        conn: &mut DB::Connection,
        s: &crate::prices::Sync,
    ) -> Result<crate::prices::Synced, StoreError> {
        Self::sync_partners(conn, &s.partners, s.now).await?;
        let existing = Self::price_versions(conn).await?;
        let new_versions =
            crate::prices::from_config(&s.prices, &existing, s.now, s.next_cycle_opens);
        for v in &new_versions {
            Self::upsert_future_price(conn, v, s.now).await?;
        }
        let backfilled = Self::backfill_issuance(conn).await?;
        let mut expiring_lots = 0;
        for (issuer, at) in &s.expiries {
            expiring_lots += Self::expire_issuer_points(conn, issuer, *at).await?;
        }
        Ok(crate::prices::Synced {
            new_versions,
            backfilled,
            expiring_lots,
        })
    }

    /// Sets a retired issuer's lots to expire at `at` at the latest. Returns how many changed.
    pub async fn expire_issuer_points(
        conn: &mut DB::Connection,
        issuer: &str,
        at: Micros,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(sql::EXPIRE_ISSUER)
            .bind(issuer.to_string())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        Ok(sqlx_rows(r))
    }

    /// The cycle's issuance per issuer and fee rate.
    pub async fn cycle_issuance(
        conn: &mut DB::Connection,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Issuance>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(sql::CYCLE_ISSUANCE)
            .bind(cycle.to_string())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(coalition_clearing::Issuance {
                    issuer: r.try_get(0)?,
                    fee_rate: decimal("issuance.fee_rate", &r.try_get::<String, _>(1)?)?,
                    points: r.try_get(2)?,
                    value: Decimal::ZERO,
                })
            })
            .collect()
    }

    /// Recomputes from the price history what each earn should have been charged and each burn
    /// priced at, and names every partner and period where the ledger says otherwise.
    pub async fn verify_prices(conn: &mut DB::Connection) -> Result<Vec<String>, StoreError> {
        use sqlx::Row;
        let versions = Self::price_versions(conn).await?;
        let mut out = Vec::new();
        let mut by_partner: std::collections::BTreeMap<&str, Vec<&PriceVersion>> =
            Default::default();
        for v in &versions {
            by_partner.entry(&v.partner).or_default().push(v);
        }
        for (partner, vs) in by_partner {
            for (i, v) in vs.iter().enumerate() {
                let until = vs.get(i + 1).map_or(i64::MAX, |n| n.effective_from);
                for (what, query, expected) in [
                    ("issuance fee", sql::EARN_FEES_BETWEEN, v.issuance_fee),
                    (
                        "redemption rate",
                        sql::BURN_RATES_BETWEEN,
                        v.redemption_rate,
                    ),
                ] {
                    let rows = sqlx::query(query)
                        .bind(partner.to_string())
                        .bind(v.effective_from)
                        .bind(until)
                        .fetch_all(&mut *conn)
                        .await?;
                    for r in rows {
                        let got: String = r.try_get(0)?;
                        if decimal("rate", &got)? != expected {
                            out.push(format!(
                                "{partner}: a transaction accepted from {} used {what} {got}, but the version in force says {expected}",
                                crate::clock::rfc3339(v.effective_from)
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Rows a statement changed, on any backend.
fn sqlx_rows<R: RowsAffected>(r: R) -> u64 {
    r.rows()
}

/// `rows_affected` of either backend's query result.
pub trait RowsAffected {
    /// Rows changed.
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}
