//! What differs between SQLite and PostgreSQL, named in one place: bind placeholders, how money
//! is stored, the locks several daemons need, and the few statements each dialect spells its way.

/// The `n`-th (1-based) bind placeholder of a statement for `DB`: `?` on SQLite, `$n` elsewhere.
/// (sqlx resolves each `$n` on SQLite by scanning the statement's parameter names: quadratic in a
/// multi-row statement of thousands of binds. A `?` is taken in order.) Binds must then come in
/// placeholder order, each placeholder used once.
pub fn mark<DB: sqlx::Database>(n: usize) -> String {
    if DB::NAME == "SQLite" {
        "?".to_string()
    } else {
        format!("${n}")
    }
}

/// `(m, m, …), (…)`: placeholders for `rows` rows of `cols` columns (see [`mark`]).
pub fn rows_of_marks<DB: sqlx::Database>(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=cols).map(|c| mark::<DB>(r * cols + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
