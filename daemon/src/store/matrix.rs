//! Each cycle's gross matrix (issuer × redeemer × rate), kept by the writer with every batch so that
//! a clearing run reads cells, not allocations: SQL once for both backends. The audit recomputes
//! every cell from the allocations ([`MATRIX_CHECK`]).

use super::error::StoreError;
use crate::ledger::Allocation;
use std::collections::BTreeMap;

/// One cell's change from one batch: (issuer, redeemer, rate as the allocations store it) →
/// (points, allocations).
pub type Cells = BTreeMap<(String, String, String), (i64, i64)>;

/// Sums a batch's allocations into the cells they add to. The rate's text is the allocation's
/// (scale included), so that each cell is exactly a `GROUP BY` of the allocations' stored rate.
pub fn cells_of(allocations: &[Allocation]) -> Result<Cells, StoreError> {
    let mut cells = Cells::new();
    for a in allocations {
        let c = cells
            .entry((a.issuer.clone(), a.redeemer.clone(), a.rate.to_string()))
            .or_default();
        // Points per allocation are capped far below i64::MAX / max_batch; checked all the same.
        c.0 = c.0.checked_add(a.points).ok_or_else(|| {
            StoreError::Refused(format!(
                "points of {} → {} overflow the batch's matrix",
                a.issuer, a.redeemer
            ))
        })?;
        c.1 += 1;
    }
    Ok(cells)
}

/// The audit's check: every stored cell equals its allocations summed, and every group of
/// allocations has its cell (a count of differences; 0 passes).
pub const MATRIX_CHECK: &str = "SELECT (SELECT COUNT(*) FROM (SELECT cycle, issuer, redeemer, CAST(rate AS TEXT) AS rate, \
    SUM(points) AS p, COUNT(*) AS n FROM allocations GROUP BY cycle, issuer, redeemer, CAST(rate AS TEXT)) a \
    LEFT JOIN cycle_matrix m ON m.cycle = a.cycle AND m.issuer = a.issuer AND m.redeemer = a.redeemer AND m.rate = a.rate \
    WHERE m.cycle IS NULL OR m.points <> a.p OR m.allocations <> a.n) \
    + (SELECT COUNT(*) FROM cycle_matrix m WHERE NOT EXISTS (SELECT 1 FROM allocations a WHERE a.cycle = m.cycle \
    AND a.issuer = m.issuer AND a.redeemer = m.redeemer AND CAST(a.rate AS TEXT) = m.rate))";

/// The cycle's cells: (issuer, redeemer, rate, points, allocations).
pub const CELLS: &str =
    "SELECT issuer, redeemer, rate, points, allocations FROM cycle_matrix WHERE cycle = $1";

/// The matrix SQL, generic over the sqlx database.
pub struct MatrixSql<DB>(std::marker::PhantomData<DB>);

impl<DB> MatrixSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Adds a batch's cells to cycle `cycle`'s matrix: multi-row upserts of at most 250 rows.
    pub async fn add(
        conn: &mut DB::Connection,
        cycle: chrono::NaiveDate,
        cells: &Cells,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<_> = cells.iter().collect();
        for chunk in rows.chunks(250) {
            let sql = format!(
                "INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations) VALUES {} \
                 ON CONFLICT (cycle, issuer, redeemer, rate) DO UPDATE SET \
                 points = cycle_matrix.points + excluded.points, \
                 allocations = cycle_matrix.allocations + excluded.allocations",
                super::dialect::rows_of_marks::<DB>(chunk.len(), 6)
            );
            let mut q = sqlx::query(&sql);
            for ((issuer, redeemer, rate), (points, n)) in chunk {
                q = q
                    .bind(cycle.to_string())
                    .bind(issuer.clone())
                    .bind(redeemer.clone())
                    .bind(rate.clone())
                    .bind(*points)
                    .bind(*n);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The cycle's gross matrix as clearing reads it.
    pub async fn slices(
        conn: &mut DB::Connection,
        cycle: chrono::NaiveDate,
    ) -> Result<Vec<coalition_clearing::Slice>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(CELLS)
            .bind(cycle.to_string())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                let rate: String = r.try_get(2)?;
                Ok(coalition_clearing::Slice {
                    issuer: r.try_get(0)?,
                    redeemer: r.try_get(1)?,
                    rate: rate.parse().map_err(|e| {
                        StoreError::Corrupt(format!("cycle_matrix.rate {rate:?}: {e}"))
                    })?,
                    points: r.try_get(3)?,
                    allocations: r.try_get(4)?,
                })
            })
            .collect()
    }
}
