//! Members' consents: per purpose, who captured them and when, with withdrawal; each change
//! idempotent by the caller's own request id. Written once for both backends.

use super::error::StoreError;
use crate::ledger::Micros;

/// What a member may agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purpose {
    /// Marketing by the partner that captured the consent (scoped to that partner).
    Marketing,
    /// Use of the member's data in coalition analytics.
    Analytics,
    /// Sharing the member's data with other partners.
    Sharing,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 3] = [Purpose::Marketing, Purpose::Analytics, Purpose::Sharing];

    /// As stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Analytics => "analytics",
            Purpose::Sharing => "sharing",
        }
    }

    /// From the wire.
    pub fn parse(s: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the purpose belongs to one partner (marketing) rather than the coalition.
    pub fn scoped(self) -> bool {
        self == Purpose::Marketing
    }
}

/// A consent as last recorded (or as a change first answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The member.
    pub member: String,
    /// The purpose.
    pub purpose: String,
    /// The partner of a marketing consent; "" for coalition-wide purposes.
    pub scope: String,
    /// Agreed (true) or withdrawn (false).
    pub granted: bool,
    /// `partner/<id>` or `operator/<name>`.
    pub captured_by: String,
    /// When.
    pub captured_at: Micros,
}

/// A change asked for.
#[derive(Debug, Clone)]
pub struct ConsentChange {
    /// `partner/<id>` or `operator/<name>`.
    pub actor: String,
    /// The caller's own id of the change.
    pub request_id: String,
    /// SHA-256 of the change's content, to tell a retry from a reuse of the id.
    pub hash: Vec<u8>,
    /// The consent it sets.
    pub record: ConsentRecord,
}

/// What became of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentOutcome {
    /// Recorded now.
    Applied(ConsentRecord),
    /// A retry: the first answer.
    Replayed(ConsentRecord),
    /// The id was used for another change.
    IdReused,
}

/// SQL, the same on both backends.
mod sql {
    pub const EVENT: &str = "SELECT request_hash, member_id, purpose, scope, granted, at FROM consent_events \
        WHERE actor = $1 AND request_id = $2";
    pub const INSERT_EVENT: &str = "INSERT INTO consent_events (actor, request_id, request_hash, member_id, purpose, scope, granted, at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    pub const UPSERT: &str = "INSERT INTO consents (member_id, purpose, scope, granted, captured_by, captured_at) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (member_id, purpose, scope) DO UPDATE SET \
        granted = excluded.granted, captured_by = excluded.captured_by, captured_at = excluded.captured_at";
    pub const LIST: &str = "SELECT member_id, purpose, scope, granted, captured_by, captured_at FROM consents \
        WHERE member_id = $1 ORDER BY purpose, scope";
}

/// Applies `change` inside the caller's write transaction.
pub async fn record<DB>(
    conn: &mut DB::Connection,
    change: &ConsentChange,
) -> Result<ConsentOutcome, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    if let Some(r) = sqlx::query(sql::EVENT)
        .bind(change.actor.clone())
        .bind(change.request_id.clone())
        .fetch_optional(&mut *conn)
        .await?
    {
        let hash: Vec<u8> = r.try_get(0)?;
        if hash != change.hash {
            return Ok(ConsentOutcome::IdReused);
        }
        return Ok(ConsentOutcome::Replayed(ConsentRecord {
            member: r.try_get(1)?,
            purpose: r.try_get(2)?,
            scope: r.try_get(3)?,
            granted: r.try_get(4)?,
            captured_by: change.actor.clone(),
            captured_at: r.try_get(5)?,
        }));
    }
    let c = &change.record;
    sqlx::query(sql::INSERT_EVENT)
        .bind(change.actor.clone())
        .bind(change.request_id.clone())
        .bind(change.hash.clone())
        .bind(c.member.clone())
        .bind(c.purpose.clone())
        .bind(c.scope.clone())
        .bind(c.granted)
        .bind(c.captured_at)
        .execute(&mut *conn)
        .await?;
    sqlx::query(sql::UPSERT)
        .bind(c.member.clone())
        .bind(c.purpose.clone())
        .bind(c.scope.clone())
        .bind(c.granted)
        .bind(c.captured_by.clone())
        .bind(c.captured_at)
        .execute(&mut *conn)
        .await?;
    Ok(ConsentOutcome::Applied(c.clone()))
}

/// A member's consents, as last recorded.
pub async fn list<DB>(
    conn: &mut DB::Connection,
    member: &str,
) -> Result<Vec<ConsentRecord>, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let rows = sqlx::query(sql::LIST)
        .bind(member.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ConsentRecord {
                member: r.try_get(0)?,
                purpose: r.try_get(1)?,
                scope: r.try_get(2)?,
                granted: r.try_get(3)?,
                captured_by: r.try_get(4)?,
                captured_at: r.try_get(5)?,
            })
        })
        .collect()
}
