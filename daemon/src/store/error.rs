//! How storage fails.

/// A storage failure: the database could not be reached or refused the work. Nothing of the
/// batch it hit was applied; the caller may retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement (a constraint, a type): something in the batch, not the
    /// connection. The writer then applies the batch's requests one by one, so that one such
    /// request cannot fail its neighbours.
    #[error("storage refused the batch: {0}")]
    Refused(String),
    /// The daemon is shutting down and takes no more writes.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// Stored data cannot be read back as this daemon wrote it (a hand edit, a bad migration).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(&e)
    }
}

impl From<&sqlx::Error> for StoreError {
    fn from(e: &sqlx::Error) -> Self {
        // A statement the database refused is something in the batch; a lost or shut-down
        // connection (SQLSTATE classes 08 and 57) is not.
        let connection = |code: &str| code.starts_with("08") || code.starts_with("57");
        let out = match e {
            sqlx::Error::Database(d) if !d.code().as_deref().is_some_and(connection) => {
                StoreError::Refused(e.to_string())
            }
            sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        };
        let kind = match &out {
            StoreError::Refused(_) => "refused",
            StoreError::Corrupt(_) => "corrupt",
            _ => "unavailable",
        };
        metrics::counter!("coalition_db_errors_total", "kind" => kind).increment(1);
        out
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}
