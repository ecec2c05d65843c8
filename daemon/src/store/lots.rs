//! Reading a batch's members without reading their whole history: each member's row (known, and
//! the points left in all its open lots, kept by the writer in `members.open_points`), the first
//! few of its open lots in spending order ([`LOT_PREFIXES`]), and more only for the few members
//! whose first lots cannot decide the batch ([`prefix_covers`]). A burn's work then grows with the lots
//! it consumes, not with the lots the member holds. SQL once for both backends; only the shape of
//! "the first lots of each member" differs (a correlated `LIMIT` on SQLite, `LATERAL` on
//! PostgreSQL), over the index `lots_member_spend`.

use crate::ledger::{LOT_PREFIXES, MemberLedger, Micros, prefix_covers, spend_key};
use std::collections::HashMap;

/// The spending order in SQL, matching the index `lots_member_spend` and [`spend_key`].
const SPEND_ORDER: &str = "COALESCE(expires_at, 9223372036854775807), earned_at, id";

/// The lots SQL, generic over the sqlx database.
pub struct LotsSql<DB>(std::marker::PhantomData<DB>);

impl<DB> LotsSql<DB>
where
    DB: super::dialect::Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
{
    fn marks(n: usize) -> String {
        (1..=n)
            .map(super::dialect::mark::<DB>)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Loads `members` (each with the points the batch may take from its lots, at most) for a
    /// decision at `now`: known members with their open debts, and enough of their open lots —
    /// the first [`LOT_PREFIXES`]`[0]` in spending order, more for the members those do not
    /// decide, every lot for the few that even those do not.
    pub async fn load_members(
        conn: &mut DB::Connection,
        members: &[(String, i64)],
        now: Micros,
    ) -> Result<Vec<MemberLedger>, sqlx::Error> {
        Self::load_with(conn, members, now, &LOT_PREFIXES).await
    }

    /// A member with every open lot and its debts (views that list or split every lot), in one
    /// query of its row and lots.
    pub async fn member_whole(
        conn: &mut DB::Connection,
        member: &str,
    ) -> Result<Option<MemberLedger>, sqlx::Error> {
        let all = [i64::MAX as usize];
        let m = Self::load_with(conn, &[(member.to_string(), 0)], 0, &all).await?;
        Ok(m.into_iter().next())
    }

    /// [`Self::load_members`] reading the first `limits[0]` lots, then `limits[1]`, …, then all.
    async fn load_with(
        conn: &mut DB::Connection,
        members: &[(String, i64)],
        now: Micros,
        limits: &[usize],
    ) -> Result<Vec<MemberLedger>, sqlx::Error> {
        use sqlx::Row;
        let mut out: HashMap<String, MemberLedger> = HashMap::new();
        let mut stored: HashMap<String, i64> = HashMap::new();
        let mut todo: Vec<(String, i64)> = members.to_vec();
        for &limit in limits {
            if todo.is_empty() {
                break;
            }
            for chunk in todo.chunks(500) {
                let prefix = format!(
                    "SELECT m.member_id AS known_member, m.open_points, m.activity_month, m.activity_mask, \
                     m.first_at, m.second_at, l.* {} WHERE m.member_id IN ({})",
                    DB::first_lots_join(SPEND_ORDER, limit),
                    Self::marks(chunk.len())
                );
                let mut q = sqlx::query(&prefix);
                for (m, _) in chunk {
                    q = q.bind(m.clone());
                    if let Some(l) = out.get_mut(m) {
                        l.lots.clear();
                    }
                }
                for row in q.fetch_all(&mut *conn).await? {
                    let member: String = row.try_get("known_member")?;
                    stored.insert(member.clone(), row.try_get("open_points")?);
                    let ledger = out.entry(member.clone()).or_insert_with(|| MemberLedger {
                        known: true,
                        ..MemberLedger::new_member(&member)
                    });
                    ledger.activity = crate::ledger::Activity {
                        month: row.try_get("activity_month")?,
                        mask: row.try_get("activity_mask")?,
                        first_at: row.try_get("first_at")?,
                        second_at: row.try_get("second_at")?,
                    };
                    if row.try_get::<Option<i64>, _>("id")?.is_some() {
                        ledger.lots.push(super::rows::Rows::<DB>::lot(&row)?);
                    }
                }
            }
            // Members whose first lots cannot decide the batch (or whose kept total disagrees
            // with them) are read again, further.
            let mut next = Vec::new();
            for (member, demand) in todo {
                let Some(m) = out.get_mut(&member) else {
                    continue;
                };
                m.lots.sort_by_key(spend_key);
                let loaded: i64 = m.lots.iter().map(|l| l.points_left).sum();
                let open = stored.get(&member).copied().unwrap_or(0);
                if m.lots.len() < limit {
                    m.unloaded = 0;
                } else if prefix_covers(&m.lots, limit, demand, now) && open >= loaded {
                    m.unloaded = open - loaded;
                } else {
                    next.push((member, demand));
                }
            }
            todo = next;
        }
        let whole: Vec<String> = todo.into_iter().map(|(m, _)| m).collect();
        for chunk in whole.chunks(500) {
            let sql = format!(
                "SELECT * FROM lots WHERE points_left > 0 AND member_id IN ({}) ORDER BY member_id, {SPEND_ORDER}",
                Self::marks(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q.bind(m.clone());
                if let Some(l) = out.get_mut(m) {
                    l.lots.clear();
                    l.unloaded = 0;
                }
            }
            for row in q.fetch_all(&mut *conn).await? {
                let lot = super::rows::Rows::<DB>::lot(&row)?;
                if let Some(m) = out.get_mut(&lot.member) {
                    m.lots.push(lot);
                }
            }
        }
        let known: Vec<String> = out.keys().cloned().collect();
        for chunk in known.chunks(500) {
            let sql = format!(
                "SELECT * FROM debts WHERE points_left > 0 AND member_id IN ({}) ORDER BY txn_id",
                Self::marks(chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q.bind(m.clone());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let d = super::rows::Rows::<DB>::debt(&row)?;
                if let Some(m) = out.get_mut(&d.member) {
                    m.debts.push(d);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Enough of `member` to show its balance and next expiry at `now` (a partner's read): its
    /// first lots, and every lot only when those cannot say.
    pub async fn member_at(
        conn: &mut DB::Connection,
        member: &str,
        now: Micros,
    ) -> Result<Option<MemberLedger>, sqlx::Error> {
        let first = Self::load_members(conn, &[(member.to_string(), 0)], now).await?;
        match first.into_iter().next() {
            Some(m) if !m.next_expiry_known(now) => {
                Ok(
                    Self::load_members(conn, &[(member.to_string(), i64::MAX)], now)
                        .await?
                        .into_iter()
                        .next(),
                )
            }
            m => Ok(m),
        }
    }

    /// Writes the batch's members: new ones with their first instant, and every member whose
    /// points left in open lots or kept activity changed (one multi-row upsert; `first_seen` of a
    /// known member is never touched).
    pub async fn write_members(
        conn: &mut DB::Connection,
        rows: &[super::model::MemberRow],
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(200) {
            let sql = format!(
                "INSERT INTO members (member_id, first_seen, open_points, activity_month, activity_mask, first_at, second_at) \
                 VALUES {} ON CONFLICT (member_id) DO UPDATE SET open_points = excluded.open_points, \
                 activity_month = excluded.activity_month, activity_mask = excluded.activity_mask, \
                 first_at = excluded.first_at, second_at = excluded.second_at",
                super::dialect::rows_of_marks::<DB>(chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(r.member.clone())
                    .bind(r.first_seen)
                    .bind(r.open_points)
                    .bind(r.activity.month)
                    .bind(r.activity.mask)
                    .bind(r.activity.first_at)
                    .bind(r.activity.second_at);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}
