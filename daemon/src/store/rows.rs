//! Rows to domain types, once for both backends. The only difference between them is how money
//! is stored: TEXT decimal strings on SQLite, NUMERIC on PostgreSQL ([`Dialect::decimal`]).

use super::dialect::Dialect;
use super::error::StoreError;
use super::model::{TxnRecord, decode_slices};
use crate::ledger::{Allocation, Debt, Kind, Lot, Receipt};
use rust_decimal::Decimal;
use sqlx::Row;

fn rate<DB: Dialect>(row: &DB::Row) -> Result<Decimal, sqlx::Error> {
    DB::decimal(row, "rate")?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "rate".into(),
        source: "NULL rate".into(),
    })
}

/// Decodes rows of this backend's ledger tables.
pub struct Rows<DB>(std::marker::PhantomData<DB>);

impl<DB> Rows<DB>
where
    DB: Dialect,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
{
    /// A `lots` row.
    pub fn lot(row: &DB::Row) -> Result<Lot, sqlx::Error> {
        Ok(Lot {
            id: row.try_get("id")?,
            member: row.try_get("member_id")?,
            issuer: row.try_get("issuer")?,
            points: row.try_get("points")?,
            points_left: row.try_get("points_left")?,
            reversed: row.try_get("reversed")?,
            expired: row.try_get("expired")?,
            earned_at: row.try_get("earned_at")?,
            expires_at: row.try_get("expires_at")?,
            dirty: false,
        })
    }

    /// A `debts` row.
    pub fn debt(row: &DB::Row) -> Result<Debt, sqlx::Error> {
        Ok(Debt {
            member: row.try_get("member_id")?,
            owed_to: row.try_get("owed_to")?,
            points: row.try_get("points")?,
            points_left: row.try_get("points_left")?,
            rate: rate::<DB>(row)?,
            txn: row.try_get("txn_id")?,
            created_at: row.try_get("created_at")?,
            dirty: false,
        })
    }

    /// An `allocations` row.
    pub fn allocation(row: &DB::Row) -> Result<Allocation, sqlx::Error> {
        let reverses_txn: Option<i64> = row.try_get("reverses_txn")?;
        let reverses_seq: Option<i32> = row.try_get("reverses_seq")?;
        Ok(Allocation {
            txn: row.try_get("txn_id")?,
            seq: row.try_get("seq")?,
            lot: row.try_get("lot_id")?,
            member: row.try_get("member_id")?,
            issuer: row.try_get("issuer")?,
            redeemer: row.try_get("redeemer")?,
            points: row.try_get("points")?,
            rate: rate::<DB>(row)?,
            reverses: reverses_txn.zip(reverses_seq),
            accepted_at: row.try_get("accepted_at")?,
        })
    }

    /// A `transactions` row, with its first answer.
    pub fn txn(row: &DB::Row) -> Result<TxnRecord, StoreError> {
        let kind: String = row.try_get("kind")?;
        let kind = Kind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("transactions.kind holds {kind:?}")))?;
        let amount = DB::decimal(row, "purchase_amount")?;
        let currency: Option<String> = row.try_get("purchase_currency")?;
        let slices: String = row.try_get("slices")?;
        let points: i64 = row.try_get("points")?;
        let reversed_points: i64 = row.try_get("reversed_points")?;
        let stored_parts: Option<String> = row.try_get("parts")?;
        let parts = match kind {
            Kind::Earn | Kind::ReverseEarn => {
                crate::ledger::parts::decode(stored_parts.as_deref(), points)
                    .map_err(StoreError::Corrupt)?
            }
            _ => vec![],
        };
        let parts_reversed = match row.try_get::<Option<String>, _>("parts_reversed")? {
            Some(s) if kind == Kind::Earn => serde_json::from_str::<Vec<i64>>(&s)
                .ok()
                .filter(|v| v.len() == parts.len())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("transactions.parts_reversed holds {s:?}"))
                })?,
            _ if kind == Kind::Earn => vec![reversed_points],
            _ => vec![],
        };
        let receipt = Receipt {
            transaction_id: row.try_get("partner_txn_id")?,
            ledger_id: row.try_get("id")?,
            kind,
            member_id: row.try_get("member_id")?,
            points,
            balance_after: row.try_get("balance_after")?,
            accepted_at: row.try_get("accepted_at")?,
            slices: decode_slices(&slices)?,
            debt_created: row.try_get("debt_created")?,
            debt_repaid: row.try_get("debt_repaid")?,
            original_transaction_id: row.try_get("original_txn_id")?,
            parts,
            tier: row.try_get("tier")?,
            hold: None,
        };
        Ok(TxnRecord {
            id: receipt.ledger_id,
            partner: row.try_get("partner_id")?,
            partner_txn_id: receipt.transaction_id.clone(),
            kind,
            member: receipt.member_id.clone(),
            points: receipt.points,
            reversed_points,
            parts_reversed,
            original_id: row.try_get("original_id")?,
            purchase: amount.map(|a| a.to_string()).zip(currency),
            request_hash: row.try_get("request_hash")?,
            accepted_at: receipt.accepted_at,
            receipt,
        })
    }

    /// A statement line (the `clearing::sql::STATEMENT` columns).
    pub fn statement_line(
        row: &DB::Row,
    ) -> Result<coalition_clearing::export::StatementLine, sqlx::Error> {
        Ok(coalition_clearing::export::StatementLine::allocation(
            row.try_get("txn_id")?,
            row.try_get("seq")?,
            row.try_get("tid")?,
            crate::clock::rfc3339(row.try_get("accepted_at")?),
            row.try_get("issuer")?,
            row.try_get("redeemer")?,
            row.try_get("points")?,
            rate::<DB>(row)?,
        ))
    }
}

/// The transaction reads of the partner API, once for both backends.
pub struct TxnReads<DB>(std::marker::PhantomData<DB>);

impl<DB> TxnReads<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
{
    /// One of a partner's transactions by its own id.
    pub async fn transaction(
        conn: &mut DB::Connection,
        partner: &str,
        partner_txn_id: &str,
    ) -> Result<Option<TxnRecord>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM transactions WHERE partner_id = $1 AND partner_txn_id = $2")
                .bind(partner.to_string())
                .bind(partner_txn_id.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        row.as_ref().map(Rows::<DB>::txn).transpose()
    }

    /// A partner's transactions with a member, newest first, before (accepted_at, id) if given.
    pub async fn activity(
        conn: &mut DB::Connection,
        partner: &str,
        member: &str,
        before: Option<(crate::ledger::Micros, i64)>,
        limit: i64,
    ) -> Result<Vec<TxnRecord>, StoreError> {
        let (at, id) = before.unwrap_or((i64::MAX, i64::MAX));
        let rows = sqlx::query(
            "SELECT * FROM transactions WHERE partner_id = $1 AND member_id = $2 AND (accepted_at, id) < ($3, $4) \
             ORDER BY accepted_at DESC, id DESC LIMIT $5",
        )
        .bind(partner.to_string())
        .bind(member.to_string())
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(Rows::<DB>::txn).collect()
    }
}
