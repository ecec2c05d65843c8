//! Helpers every bulk statement uses: placeholders for lists and rows, and a multi-row insert
//! split where its rows pass the bound parameters one statement takes.

use super::dialect::{Dialect, MAX_BINDS};

/// `(a, b), (c, d)…` of `n` rows of `cols` placeholders, for a statement of `DB`.
pub fn value_rows<DB: sqlx::Database>(n: usize, cols: usize) -> String {
    super::dialect::rows_of_marks::<DB>(n, cols)
}

/// `m, m, …`: `n` placeholders of one list.
pub fn in_list<DB: sqlx::Database>(n: usize) -> String {
    (1..=n)
        .map(super::dialect::mark::<DB>)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A query with its bound values so far.
pub type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// Inserts `rows` with one multi-row statement (more where the rows pass the bound parameters one
/// statement takes): `{head} VALUES (…), (…){tail}`, each row's `cols` values bound by `bind`.
pub async fn insert<DB, T, F>(
    conn: &mut DB::Connection,
    head: &str,
    tail: &str,
    cols: usize,
    rows: &[T],
    bind: F,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    F: for<'q> Fn(Query<'q, DB>, &T) -> Query<'q, DB>,
{
    for chunk in rows.chunks(MAX_BINDS / cols) {
        let sql = format!(
            "{head} VALUES {}{tail}",
            value_rows::<DB>(chunk.len(), cols)
        );
        let mut q = sqlx::query::<DB>(&sql);
        for row in chunk {
            q = bind(q, row);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
