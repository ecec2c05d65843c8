//! Holds in SQL, once for both backends: a hold's row and its slices (the points it took from each
//! lot while it is held). The batch reads and writes them inside its transaction; the read pool
//! answers what is held of a member and one hold by its id.

use super::error::StoreError;
use crate::ledger::{HeldSlice, HoldState, HoldView, Micros};
use sqlx::Row;
use std::collections::HashMap;

/// One hold as stored.
#[derive(Debug, Clone)]
pub struct HoldRecord {
    /// Ledger id (from the transaction id sequence).
    pub id: i64,
    /// The partner that authorized it.
    pub partner: String,
    /// The partner's id of the authorization (the authorization id of captures and voids).
    pub partner_txn_id: String,
    /// The member.
    pub member: String,
    /// Points reserved.
    pub points: i64,
    /// Hash of the authorization's content.
    pub request_hash: Vec<u8>,
    /// The member's available balance right after the authorization (its first answer).
    pub balance_after: i64,
    /// When it was authorized.
    pub authorized_at: Micros,
    /// When it runs out.
    pub expires_at: Micros,
    /// Where it stands.
    pub state: HoldState,
    /// Points captured.
    pub captured: i64,
    /// The burn transaction of its capture.
    pub capture_id: Option<i64>,
    /// The partner's id of the capture or void that closed it.
    pub closed_by: Option<String>,
    /// When it closed.
    pub closed_at: Option<Micros>,
    /// Points held per lot while it is held (loaded with the hold; empty once closed).
    pub slices: Vec<HeldSlice>,
}

impl HoldRecord {
    /// The hold as a partner sees it.
    pub fn view(&self) -> HoldView {
        HoldView {
            authorization_id: self.partner_txn_id.clone(),
            state: self.state,
            points: self.points,
            captured: self.captured,
            authorized_at: self.authorized_at,
            expires_at: self.expires_at,
            closed_by: self.closed_by.clone(),
        }
    }

    /// The hold as it stands at `now`: one still stored as held whose time has come reads
    /// expired, as the balance already counts it, whether or not a batch or the clearing sweep
    /// has released it yet (they store the same state, closed at `expires_at`).
    pub fn view_at(&self, now: Micros) -> HoldView {
        let mut v = self.view();
        if v.state == HoldState::Held && self.expires_at <= now {
            v.state = HoldState::Expired;
        }
        v
    }
}

/// What a batch changes of holds.
#[derive(Debug, Default, Clone)]
pub struct HoldWrites {
    /// New or changed holds; the slices of those still held are (re)written, the slices of
    /// closed ones deleted.
    pub holds: Vec<HoldRecord>,
}

/// A read of holds through the read pool.
#[derive(Debug, Clone)]
pub enum HoldsCall {
    /// What a member has held at `now`: points of holds still running, and points of holds that
    /// ran out but are not released yet and will go back to live lots.
    Of {
        /// The member.
        member: String,
        /// The instant.
        now: Micros,
    },
    /// One of a partner's holds by the partner's id of its authorization, or of the capture or
    /// void that closed it.
    One {
        /// The partner.
        partner: String,
        /// Its id.
        id: String,
    },
}

/// The answer to a [`HoldsCall`].
#[derive(Debug, Clone)]
pub enum HoldsReply {
    /// (held, to be released to live lots).
    Of(i64, i64),
    /// The hold, if any.
    One(Option<Box<HoldRecord>>),
}

const COLUMNS: &str = "id, partner_id, partner_txn_id, member_id, points, request_hash, balance_after, \
    authorized_at, expires_at, state, captured, capture_id, closed_by, closed_at";

/// The holds SQL, generic over the sqlx database.
pub struct HoldsSql<DB>(std::marker::PhantomData<DB>);

impl<DB> HoldsSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    fn hold(row: &DB::Row) -> Result<HoldRecord, StoreError> {
        let state: String = row.try_get(9)?;
        Ok(HoldRecord {
            id: row.try_get(0)?,
            partner: row.try_get(1)?,
            partner_txn_id: row.try_get(2)?,
            member: row.try_get(3)?,
            points: row.try_get(4)?,
            request_hash: row.try_get(5)?,
            balance_after: row.try_get(6)?,
            authorized_at: row.try_get(7)?,
            expires_at: row.try_get(8)?,
            state: HoldState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("holds.state holds {state:?}")))?,
            captured: row.try_get(10)?,
            capture_id: row.try_get(11)?,
            closed_by: row.try_get(12)?,
            closed_at: row.try_get(13)?,
            slices: vec![],
        })
    }

    /// Fills in the slices of held holds.
    async fn with_slices(
        conn: &mut DB::Connection,
        mut holds: Vec<HoldRecord>,
    ) -> Result<Vec<HoldRecord>, StoreError> {
        let ids: Vec<i64> = holds
            .iter()
            .filter(|h| h.state == HoldState::Held)
            .map(|h| h.id)
            .collect();
        let mut slices: HashMap<i64, Vec<HeldSlice>> = HashMap::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(super::dialect::mark::<DB>).collect();
            let sql = format!(
                "SELECT hold_id, lot_id, points FROM hold_slices WHERE hold_id IN ({}) ORDER BY hold_id, seq",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *conn).await? {
                slices.entry(row.try_get(0)?).or_default().push(HeldSlice {
                    lot: row.try_get(1)?,
                    points: row.try_get(2)?,
                });
            }
        }
        for h in &mut holds {
            h.slices = slices.remove(&h.id).unwrap_or_default();
        }
        Ok(holds)
    }

    /// Holds whose authorization id, or the id of the capture or void that closed them, is one
    /// of `keys` (partner, partner's id).
    pub async fn find(
        conn: &mut DB::Connection,
        keys: &[(String, String)],
    ) -> Result<Vec<HoldRecord>, StoreError> {
        let mut out: Vec<HoldRecord> = Vec::new();
        for column in ["partner_txn_id", "closed_by"] {
            for chunk in keys.chunks(400) {
                // One index probe per key on both backends (VALUES columns are column1, column2;
                // CROSS JOIN keeps SQLite from scanning holds).
                let pairs: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        format!(
                            "({}, {})",
                            super::dialect::mark::<DB>(2 * i + 1),
                            super::dialect::mark::<DB>(2 * i + 2)
                        )
                    })
                    .collect();
                let sql = format!(
                    "SELECT {} FROM (VALUES {}) AS k CROSS JOIN holds h \
                     WHERE h.partner_id = k.column1 AND h.{column} = k.column2",
                    COLUMNS
                        .split(", ")
                        .map(|c| format!("h.{c}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    pairs.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (p, t) in chunk {
                    q = q.bind(p.clone()).bind(t.clone());
                }
                for row in q.fetch_all(&mut *conn).await? {
                    let h = Self::hold(&row)?;
                    if !out.iter().any(|x| x.id == h.id) {
                        out.push(h);
                    }
                }
            }
        }
        Self::with_slices(conn, out).await
    }

    /// In one statement per chunk: the holds whose authorization id, or whose closing call's id,
    /// is one of `keys`, and every hold still held of `members`; with their slices.
    pub async fn named_or_open(
        conn: &mut DB::Connection,
        keys: &[(String, String)],
        members: &[String],
    ) -> Result<Vec<HoldRecord>, StoreError> {
        const CHUNK: usize = 1000;
        let cols: Vec<String> = COLUMNS.split(", ").map(|c| format!("h.{c}")).collect();
        let cols = cols.join(", ");
        let mut out: Vec<HoldRecord> = Vec::new();
        let chunks = keys
            .len()
            .div_ceil(CHUNK)
            .max(members.len().div_ceil(CHUNK));
        for c in 0..chunks {
            let ks = keys
                .get(c * CHUNK..keys.len().min((c + 1) * CHUNK))
                .unwrap_or(&[]);
            let ms = members
                .get(c * CHUNK..members.len().min((c + 1) * CHUNK))
                .unwrap_or(&[]);
            let mut n = 0;
            let mut next = || {
                n += 1;
                super::dialect::mark::<DB>(n)
            };
            let mut parts = Vec::new();
            // VALUES columns are column1, column2 on both backends; CROSS JOIN keeps SQLite to one
            // index probe per key.
            for column in ["partner_txn_id", "closed_by"] {
                if ks.is_empty() {
                    break;
                }
                let pairs: Vec<String> = ks
                    .iter()
                    .map(|_| format!("({}, {})", next(), next()))
                    .collect();
                parts.push(format!(
                    "SELECT {cols} FROM (VALUES {}) AS k CROSS JOIN holds h \
                     WHERE h.partner_id = k.column1 AND h.{column} = k.column2",
                    pairs.join(", ")
                ));
            }
            if !ms.is_empty() {
                let marks: Vec<String> = ms.iter().map(|_| next()).collect();
                parts.push(format!(
                    "SELECT {cols} FROM holds h WHERE h.state = 'held' AND h.member_id IN ({})",
                    marks.join(", ")
                ));
            }
            let sql = parts.join(" UNION ");
            let mut q = sqlx::query(&sql);
            for _ in 0..2 {
                for (p, t) in ks {
                    q = q.bind(p.clone()).bind(t.clone());
                }
            }
            for m in ms {
                q = q.bind(m.clone());
            }
            let mut seen: std::collections::HashSet<i64> = out.iter().map(|h| h.id).collect();
            for row in q.fetch_all(&mut *conn).await? {
                let h = Self::hold(&row)?;
                if seen.insert(h.id) {
                    out.push(h);
                }
            }
        }
        Self::with_slices(conn, out).await
    }

    /// Writes what a batch changed of holds: multi-row statements of at most 250 rows.
    pub async fn write(conn: &mut DB::Connection, w: &HoldWrites) -> Result<(), sqlx::Error> {
        let values = super::dialect::rows_of_marks::<DB>;
        const ROWS: usize = 250;
        for chunk in w.holds.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO holds ({COLUMNS}) VALUES {} \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, captured = excluded.captured, \
                 capture_id = excluded.capture_id, closed_by = excluded.closed_by, closed_at = excluded.closed_at",
                values(chunk.len(), 14)
            );
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q
                    .bind(h.id)
                    .bind(h.partner.clone())
                    .bind(h.partner_txn_id.clone())
                    .bind(h.member.clone())
                    .bind(h.points)
                    .bind(h.request_hash.clone())
                    .bind(h.balance_after)
                    .bind(h.authorized_at)
                    .bind(h.expires_at)
                    .bind(h.state.as_str().to_string())
                    .bind(h.captured)
                    .bind(h.capture_id)
                    .bind(h.closed_by.clone())
                    .bind(h.closed_at);
            }
            q.execute(&mut *conn).await?;
        }
        // A batch only ever changes a hold by opening it (held, with slices) or closing it.
        let closed: Vec<i64> = w
            .holds
            .iter()
            .filter(|h| h.state != HoldState::Held)
            .map(|h| h.id)
            .collect();
        for chunk in closed.chunks(ROWS) {
            let marks: Vec<String> = (1..=chunk.len()).map(super::dialect::mark::<DB>).collect();
            let sql = format!(
                "DELETE FROM hold_slices WHERE hold_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *conn).await?;
        }
        let slices: Vec<(i64, i64, &HeldSlice)> = w
            .holds
            .iter()
            .filter(|h| h.state == HoldState::Held)
            .flat_map(|h| {
                h.slices
                    .iter()
                    .enumerate()
                    .map(move |(seq, s)| (h.id, seq as i64, s))
            })
            .collect();
        for chunk in slices.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO hold_slices (hold_id, seq, lot_id, points) VALUES {}",
                values(chunk.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for (hold, seq, s) in chunk {
                q = q.bind(*hold).bind(*seq).bind(s.lot).bind(s.points);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Answers a [`HoldsCall`].
    pub async fn call(
        conn: &mut DB::Connection,
        call: HoldsCall,
    ) -> Result<HoldsReply, StoreError> {
        Ok(match call {
            HoldsCall::Of { member, now } => {
                let row = sqlx::query(MEMBER_HELD)
                    .bind(member)
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                HoldsReply::Of(row.try_get(0)?, row.try_get(1)?)
            }
            HoldsCall::One { partner, id } => {
                let found = Self::find(conn, &[(partner, id.clone())]).await?;
                HoldsReply::One(found.into_iter().next().map(Box::new))
            }
        })
    }
}

/// A member's points in holds still held, as of $2: (those in holds that still run, those of
/// holds past their `expires_at` not yet given back whose lots still run — the member's again).
/// Every view of a member and the forget read them so.
pub const MEMBER_HELD: &str = "SELECT CAST(COALESCE(SUM(CASE WHEN h.expires_at > $2 THEN s.points ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN h.expires_at <= $2 AND (l.expires_at IS NULL OR l.expires_at > $2) \
     THEN s.points ELSE 0 END), 0) AS BIGINT) \
     FROM holds h JOIN hold_slices s ON s.hold_id = h.id JOIN lots l ON l.id = s.lot_id \
     WHERE h.member_id = $1 AND h.state = 'held'";
