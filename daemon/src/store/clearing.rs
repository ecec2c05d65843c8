//! A clearing run, shared by every backend: inside one database transaction, lock the clearing
//! state (batches hold it shared, so none is half-way), expire the lots that expired before the
//! cycle closed, gather the cycle's allocations, issuance and counts, settle them with the pure
//! `coalition-clearing` library, store the draft and seal the cycle. A crash anywhere leaves nothing:
//! the transaction rolls back.

use super::error::StoreError;
use crate::ledger::Micros;
use async_trait::async_trait;
use chrono::NaiveDate;
use coalition_clearing::{Counts, Input, Issuance, SettleError, Settlement, Slice};

/// Draft or final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// May be run again (same digest).
    Draft,
    /// Never changes.
    Final,
}

impl Status {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Final => "final",
        }
    }

    /// From storage; anything but the two words is corruption.
    pub fn parse(s: &str) -> Result<Status, StoreError> {
        match s {
            "final" => Ok(Status::Final),
            "draft" => Ok(Status::Draft),
            other => Err(StoreError::Corrupt(format!(
                "settlements.status holds {other:?}"
            ))),
        }
    }
}

/// A settlement as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The settlement.
    pub settlement: Settlement,
    /// Draft or final.
    pub status: Status,
    /// When first stored.
    pub created_at: Micros,
    /// When finalized.
    pub finalized_at: Option<Micros>,
    /// Breaks finance accepted when it finalized with some still open (`store::reconciliation`).
    pub accepted: Option<coalition_clearing::reconcile::Acceptance>,
}

pub use coalition_clearing::{Plan, Rules};

/// Checks every stored settlement (given oldest first) against the ledger: its content gives its
/// digest, it chains to the one before it with no gap, none precedes the first cycle, and
/// settling its cycle again from the ledger's facts gives the same digest. Returns what does
/// not hold, naming the cycle.
pub async fn verify(
    tx: &mut dyn ClearingTx,
    rules: &Rules,
    settlements: &[Stored],
) -> Result<Vec<String>, StoreError> {
    let mut violations = Vec::new();
    let mut previous: Option<&Settlement> = None;
    for stored in settlements {
        let s = &stored.settlement;
        let cycle = s.cycle;
        if coalition_clearing::digest_of(s) != s.digest {
            violations.push(format!(
                "settlement of {cycle}: its stored content does not give its digest {}",
                s.digest
            ));
        }
        if coalition_clearing::seal_of(s) != s.seal {
            violations.push(format!(
                "settlement of {cycle}: its digest and ledger head {:?} do not give its seal {:?}",
                s.ledger_head, s.seal
            ));
        }
        if let Some(first) = rules.first_cycle
            && cycle < first
        {
            violations.push(format!(
                "settlement of {cycle} precedes the coalition's first cycle {first}"
            ));
        }
        let expected_previous = previous.map_or(String::new(), |p| p.digest.clone());
        if s.previous_digest != expected_previous {
            violations.push(format!(
                "settlement of {cycle}: chained to {:?} but the settlement before it has digest {:?}",
                s.previous_digest, expected_previous
            ));
        }
        if let Some(p) = previous
            && coalition_clearing::next_day(p.cycle).ok() != Some(cycle)
        {
            violations.push(format!(
                "settlements skip from {} to {cycle}: the chain has a gap",
                p.cycle
            ));
        }
        let plan = rules.plan(cycle, 0, false);
        let again = settle_from(tx, &plan, s.previous_digest.clone(), s.ledger_head.clone())
            .await
            .map(|a| a.with_scheme(s.digest_scheme));
        match again {
            Ok(again) if again.digest == s.digest => {}
            Ok(again) => violations.push(format!(
                "settlement of {cycle}: stored digest {} but the ledger gives {} now (control totals stored {:?}, now {:?})",
                s.digest, again.digest, s.totals.counts, again.totals.counts
            )),
            Err(ClearingError::Store(e)) => return Err(e),
            Err(e) => violations.push(format!("settlement of {cycle} cannot be recomputed: {e}")),
        }
        previous = Some(s);
    }
    Ok(violations)
}

/// Why a clearing run did not produce a settlement.
#[derive(Debug, thiserror::Error)]
pub enum ClearingError {
    /// The cycle has not closed yet.
    #[error("cycle {cycle} has not closed yet: it closes at {closes_at}")]
    NotClosed {
        /// The cycle.
        cycle: NaiveDate,
        /// RFC 3339.
        closes_at: String,
    },
    /// An earlier cycle must be cleared first (settlements form a chain).
    #[error("cycle {missing} must be cleared before {cycle}")]
    OutOfOrder {
        /// The cycle asked for.
        cycle: NaiveDate,
        /// The earliest cycle not yet cleared.
        missing: NaiveDate,
    },
    /// The settlement math refused.
    #[error("settlement of {0} failed: {1}")]
    Settle(NaiveDate, SettleError),
    /// The cycle precedes the coalition's first business day: there is nothing to clear.
    #[error("{}", match first {
        Some(f) => format!("cycle {cycle} precedes the coalition's first cycle {f}; nothing was stored"),
        None => format!("cycle {cycle} cannot be cleared: no transaction has been accepted yet and no clearing.first_cycle is set; nothing was stored"),
    })]
    BeforeFirstCycle {
        /// The cycle asked for.
        cycle: NaiveDate,
        /// The first cycle, if known.
        first: Option<NaiveDate>,
    },
    /// The cycle is outside the calendar.
    #[error("cycle {0}: {1}")]
    Calendar(NaiveDate, coalition_clearing::CycleError),
    /// Running a draft again would change it, but a later settlement already chains its digest.
    #[error(
        "the draft of {cycle} would change on a re-run (digest {old} -> {new}), but the settlement of \
         {later} already chains its digest; the stored draft stands. Run `coalitiond audit` to see why \
         the ledger no longer gives it"
    )]
    ChainedDraftWouldChange {
        /// The cycle asked for.
        cycle: NaiveDate,
        /// The earliest later settlement.
        later: NaiveDate,
        /// Stored digest.
        old: String,
        /// Digest the ledger gives now.
        new: String,
    },
    /// Storage failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backend does inside a clearing transaction.
#[async_trait]
pub trait ClearingTx: Send {
    /// Takes the clearing state exclusively; returns the last sealed cycle. `Ok(None)` from
    /// [`ClearingTx::try_exclusive`] means another daemon is clearing.
    async fn lock_state(&mut self) -> Result<Option<NaiveDate>, StoreError>;
    /// With several daemons: whether this one may clear now (an advisory lock). Single-writer
    /// backends always may.
    async fn try_exclusive(&mut self) -> Result<bool, StoreError>;
    /// The stored settlement of a cycle.
    async fn settlement(&mut self, cycle: NaiveDate) -> Result<Option<Stored>, StoreError>;
    /// The latest settlement before `cycle`.
    async fn latest_before(&mut self, cycle: NaiveDate) -> Result<Option<Stored>, StoreError>;
    /// The earliest cycle with transactions after `after` (exclusive, if any) and before `before`.
    async fn first_activity(
        &mut self,
        after: Option<NaiveDate>,
        before: NaiveDate,
    ) -> Result<Option<NaiveDate>, StoreError>;
    /// Expires every lot whose expiry is before `before` and books its points as breakage facts
    /// of `cycle`, locking the members concerned. Returns the points expired.
    async fn sweep(&mut self, before: Micros, cycle: NaiveDate) -> Result<i64, StoreError>;
    /// The hash of the ledger chain's head (`store::chain`): what the settlement pins.
    async fn chain_head(&mut self) -> Result<String, StoreError>;
    /// The earliest settlement after `cycle`.
    async fn first_after(&mut self, cycle: NaiveDate) -> Result<Option<NaiveDate>, StoreError>;
    /// The cycle of the first transaction the ledger accepted.
    async fn first_transaction_cycle(&mut self) -> Result<Option<NaiveDate>, StoreError>;
    /// The cycle's gross matrix (kept by the writer), one slice per issuer, redeemer and rate.
    async fn slices(&mut self, cycle: NaiveDate) -> Result<Vec<Slice>, StoreError>;
    /// The cycle's issuance per issuer and fee charged at issue (earns, and their reversals
    /// refunding that fee).
    async fn issuance(&mut self, cycle: NaiveDate) -> Result<Vec<Issuance>, StoreError>;
    /// The cycle's counts.
    async fn counts(&mut self, cycle: NaiveDate) -> Result<Counts, StoreError>;
    /// Stores (inserts or replaces a draft).
    async fn save(&mut self, s: &Stored) -> Result<(), StoreError>;
    /// Marks `cycle` sealed: later commits go to the cycle after it.
    async fn seal(&mut self, cycle: NaiveDate) -> Result<(), StoreError>;
}

/// Runs the clearing of `plan.cycle` through `tx`. `Ok(None)`: skipped, another daemon is clearing.
pub async fn run(tx: &mut dyn ClearingTx, plan: &Plan) -> Result<Option<Stored>, ClearingError> {
    let close = plan
        .cycles
        .close(plan.cycle)
        .map_err(|e| ClearingError::Calendar(plan.cycle, e))?;
    if plan.now < close {
        return Err(ClearingError::NotClosed {
            cycle: plan.cycle,
            closes_at: crate::clock::rfc3339(close),
        });
    }
    if plan.skip_if_busy && !tx.try_exclusive().await? {
        return Ok(None);
    }
    let first = first_cycle(plan.first_cycle, tx.first_transaction_cycle().await?);
    if first.is_none_or(|f| plan.cycle < f) {
        return Err(ClearingError::BeforeFirstCycle {
            cycle: plan.cycle,
            first,
        });
    }
    let sealed = tx.lock_state().await?;
    let existing = tx.settlement(plan.cycle).await?;
    if let Some(s) = &existing
        && s.status == Status::Final
    {
        return Ok(existing);
    }
    let previous = tx.latest_before(plan.cycle).await?;
    let after = previous.as_ref().map(|p| p.settlement.cycle);
    if let Some(missing) = tx.first_activity(after, plan.cycle).await? {
        return Err(ClearingError::OutOfOrder {
            cycle: plan.cycle,
            missing,
        });
    }
    if let Some(p) = after {
        let gap = coalition_clearing::next_day(p).map_err(|e| ClearingError::Calendar(p, e))?;
        if gap < plan.cycle {
            return Err(ClearingError::OutOfOrder {
                cycle: plan.cycle,
                missing: gap,
            });
        }
    }
    // Breakage of lots that expired before the cycle closed belongs to it, booked once as facts
    // of this cycle by its first run; a re-run of a sealed draft reads those facts and sweeps
    // nothing (what expired since belongs to the next cycle's sweep).
    if sealed.is_none_or(|s| s < plan.cycle) {
        tx.sweep(close, plan.cycle).await?;
    }
    // The chain's head at the seal: taken by the first run (no batch is in flight: the state is
    // locked), kept by a re-run of the draft, whose cycle no batch has written to since.
    let ledger_head = match &existing {
        Some(e) => e.settlement.ledger_head.clone(),
        None => tx.chain_head().await?,
    };
    let mut settlement = settle_from(
        tx,
        plan,
        previous.map(|p| p.settlement.digest).unwrap_or_default(),
        ledger_head,
    )
    .await?;
    // A re-run keeps the scheme its draft was sealed with, so that it gives the same digest.
    if let Some(e) = &existing {
        settlement = settlement.with_scheme(e.settlement.digest_scheme);
    }
    if let Some(old) = &existing
        && old.settlement.digest != settlement.digest
    {
        // Once a later settlement chains the stored digest, the draft must not move.
        if let Some(later) = tx.first_after(plan.cycle).await? {
            return Err(ClearingError::ChainedDraftWouldChange {
                cycle: plan.cycle,
                later,
                old: old.settlement.digest.clone(),
                new: settlement.digest,
            });
        }
        tracing::warn!(cycle = %plan.cycle, old = %old.settlement.digest, new = %settlement.digest, "draft settlement changed on re-run");
    }
    let stored = Stored {
        settlement,
        status: Status::Draft,
        created_at: existing.as_ref().map_or(plan.now, |e| e.created_at),
        finalized_at: None,
        accepted: None,
    };
    tx.save(&stored).await?;
    if sealed.is_none_or(|s| s < plan.cycle) {
        tx.seal(plan.cycle).await?;
    }
    Ok(Some(stored))
}

/// The coalition's first business day: the earlier of the configured one and the cycle of the
/// first accepted transaction (a transaction is never left out of clearing).
pub fn first_cycle(
    configured: Option<NaiveDate>,
    first_transaction: Option<NaiveDate>,
) -> Option<NaiveDate> {
    match (configured, first_transaction) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Settles `plan.cycle` from what the ledger holds for it now: its allocations (each priced when
/// it was made), its issuance (each earn charged the fee in force when it was accepted), counts
/// and breakage facts (nothing is swept here). Nothing comes from today's config but the calendar,
/// currency and rounding: a price change or a partner leaving never changes a cycle already past.
/// `previous_digest` chains it; `ledger_head` pins the ledger's hash chain at the seal.
pub async fn settle_from(
    tx: &mut dyn ClearingTx,
    plan: &Plan,
    previous_digest: String,
    ledger_head: String,
) -> Result<Settlement, ClearingError> {
    let input = Input {
        cycle: plan.cycle,
        currency: plan.currency.clone(),
        minor_units: plan.minor_units,
        rounding: plan.rounding,
        slices: tx.slices(plan.cycle).await?,
        issuance: tx.issuance(plan.cycle).await?,
        counts: tx.counts(plan.cycle).await?,
        previous_digest,
        ledger_head,
    };
    coalition_clearing::settle(&input).map_err(|e| ClearingError::Settle(plan.cycle, e))
}

/// SQL shared by the backends (`$n` placeholders work on both).
pub mod sql {
    /// Members whose lots expire before $1, sorted (to lock them in a fixed order).
    pub const EXPIRING_MEMBERS: &str = "SELECT member_id FROM lots \
        WHERE points_left > 0 AND expires_at IS NOT NULL AND expires_at < $1 \
        UNION SELECT member_id FROM holds WHERE state = 'held' AND expires_at <= $1 ORDER BY member_id";
    /// Gives the points of every hold that ran out by $1 back to their lots (before the sweep, so
    /// what expired while held is swept like any expired point).
    pub const RELEASE_HOLDS: [&str; 4] = [
        "UPDATE members SET open_points = open_points + (SELECT COALESCE(SUM(s.points), 0) FROM hold_slices s \
         JOIN holds h ON h.id = s.hold_id WHERE h.member_id = members.member_id AND h.state = 'held' \
         AND h.expires_at <= $1) WHERE member_id IN (SELECT member_id FROM holds WHERE state = 'held' AND expires_at <= $1)",
        "UPDATE lots SET points_left = points_left + (SELECT COALESCE(SUM(s.points), 0) FROM hold_slices s \
         JOIN holds h ON h.id = s.hold_id WHERE s.lot_id = lots.id AND h.state = 'held' AND h.expires_at <= $1) \
         WHERE id IN (SELECT s.lot_id FROM hold_slices s JOIN holds h ON h.id = s.hold_id \
         WHERE h.state = 'held' AND h.expires_at <= $1)",
        "DELETE FROM hold_slices WHERE hold_id IN (SELECT id FROM holds WHERE state = 'held' AND expires_at <= $1)",
        "UPDATE holds SET state = 'expired', closed_at = expires_at WHERE state = 'held' AND expires_at <= $1",
    ];
    /// Records what is left of every lot expiring before $1 as a breakage fact of cycle $2.
    pub const SWEEP_FACTS: &str = "INSERT INTO breakage (lot_id, member_id, issuer, cycle, points) \
        SELECT id, member_id, issuer, $2, points_left FROM lots \
        WHERE points_left > 0 AND expires_at IS NOT NULL AND expires_at < $1";
    /// Takes what is left of those lots out of their members' kept open points.
    pub const SWEEP_MEMBERS: &str = "UPDATE members SET open_points = open_points - (SELECT COALESCE(SUM(l.points_left), 0) \
        FROM lots l WHERE l.member_id = members.member_id AND l.points_left > 0 AND l.expires_at IS NOT NULL \
        AND l.expires_at < $1) WHERE member_id IN (SELECT member_id FROM lots \
        WHERE points_left > 0 AND expires_at IS NOT NULL AND expires_at < $1)";
    /// Then empties those lots.
    pub const SWEEP: &str = "UPDATE lots SET expired = expired + points_left, points_left = 0 \
        WHERE points_left > 0 AND expires_at IS NOT NULL AND expires_at < $1";
    /// The cycle's net breakage: its facts, sweeps and reversals alike.
    pub const EXPIRED_IN: &str =
        "SELECT CAST(COALESCE(SUM(points), 0) AS BIGINT) FROM breakage WHERE cycle = $1";
    /// The earliest settlement after $1.
    pub const FIRST_AFTER: &str = "SELECT MIN(cycle) FROM settlements WHERE cycle > $1";
    /// Counts and points per kind in cycle $1.
    pub const COUNTS: &str = "SELECT kind, CAST(SUM(transactions) AS BIGINT), CAST(SUM(points) AS BIGINT) \
        FROM cycle_totals WHERE cycle = $1 GROUP BY kind";
    /// The earliest cycle with transactions in ($1, $2) — $1 may be '' for "from the beginning".
    pub const FIRST_ACTIVITY: &str =
        "SELECT MIN(cycle) FROM transactions WHERE cycle > $1 AND cycle < $2";
    /// A stored settlement.
    pub const SETTLEMENT: &str = "SELECT cycle, status, content, created_at, finalized_at, accepted_breaks FROM settlements WHERE cycle = $1";
    /// The latest settlement before $1.
    pub const LATEST_BEFORE: &str = "SELECT cycle, status, content, created_at, finalized_at, accepted_breaks FROM settlements \
        WHERE cycle < $1 ORDER BY cycle DESC LIMIT 1";
    /// Settlements before $1, newest first, at most $2.
    pub const LIST: &str = "SELECT cycle, status, content, created_at, finalized_at, accepted_breaks FROM settlements \
        WHERE cycle < $1 ORDER BY cycle DESC LIMIT $2";
    /// Insert or replace a draft (a final row is never touched).
    pub const SAVE: &str = "INSERT INTO settlements (cycle, status, digest, previous_digest, content, created_at, finalized_at) \
        VALUES ($1, 'draft', $2, $3, $4, $5, NULL) ON CONFLICT (cycle) DO UPDATE SET digest = excluded.digest, \
        previous_digest = excluded.previous_digest, content = excluded.content WHERE settlements.status = 'draft'";
    /// Every lot issued before $1, with what had happened to it by $1: points redeemed from it
    /// (its allocations, burn reversals netted), and points its own earn's reversals took back
    /// from it (a reversal's points less what it took from other lots and the debt it left).
    pub const LOT_FATES: &str = "SELECT l.issuer, l.earned_at, l.points, \
        CAST(COALESCE(a.s, 0) AS BIGINT), CAST(COALESCE(r.s, 0) AS BIGINT), l.expires_at FROM lots l \
        LEFT JOIN (SELECT lot_id, SUM(points) AS s FROM allocations WHERE accepted_at < $1 GROUP BY lot_id) a \
        ON a.lot_id = l.id \
        LEFT JOIN (SELECT t.original_id AS lot_id, SUM(t.points - t.debt_created - COALESCE(x.s, 0)) AS s \
        FROM transactions t LEFT JOIN (SELECT txn_id, SUM(points) AS s FROM allocations GROUP BY txn_id) x \
        ON x.txn_id = t.id WHERE t.kind = 'reverse_earn' AND t.accepted_at < $1 GROUP BY t.original_id) r \
        ON r.lot_id = l.id WHERE l.earned_at < $1";
    /// Seal a cycle.
    pub const SEAL: &str = "UPDATE clearing_state SET sealed_through = $1 WHERE id = 1";
    /// The latest settled cycle, the first cycle with any transaction, and the operator's
    /// confirmation of a long catch-up.
    pub const FRONTIER: &str = "SELECT (SELECT MAX(cycle) FROM settlements), (SELECT MIN(cycle) FROM transactions), \
        (SELECT catch_up_confirmed_through FROM clearing_state WHERE id = 1)";
    /// Records an operator's confirmation of a long catch-up.
    pub const CONFIRM_CATCH_UP: &str =
        "UPDATE clearing_state SET catch_up_confirmed_through = $1 WHERE id = 1";
    /// Allocations of cycle $1 where partner $2 is issuer or redeemer, with the transaction's own id
    /// when it is the partner's.
    pub const STATEMENT: &str = "SELECT a.txn_id, a.seq, CASE WHEN t.partner_id = $2 THEN t.partner_txn_id ELSE '' END AS tid, \
        a.accepted_at, a.issuer, a.redeemer, a.points, a.rate FROM allocations a JOIN transactions t ON t.id = a.txn_id \
        WHERE a.cycle = $1 AND (a.issuer = $2 OR a.redeemer = $2) ORDER BY a.txn_id, a.seq";
}

/// Where clearing stands, for the scheduler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frontier {
    /// The latest cycle with a settlement.
    pub latest_settled: Option<NaiveDate>,
    /// The cycle of the first accepted transaction.
    pub first_transaction: Option<NaiveDate>,
    /// An operator's confirmation of a long catch-up, through this cycle.
    pub confirmed_through: Option<NaiveDate>,
}

/// What had become of one lot's points by an instant (for the liability report).
#[derive(Debug, Clone)]
pub struct LotFate {
    /// The issuer.
    pub issuer: String,
    /// When issued.
    pub earned_at: Micros,
    /// Points issued.
    pub points: i64,
    /// Points redeemed from it by then, net of burns given back.
    pub redeemed: i64,
    /// Points its earn's reversals had taken back from it by then.
    pub reversed: i64,
    /// Expiry instant.
    pub expires_at: Option<Micros>,
}

/// Decodes a stored settlement's content.
pub fn stored_from(
    status: &str,
    content: &str,
    created_at: Micros,
    finalized_at: Option<Micros>,
    accepted: Option<&str>,
) -> Result<Stored, StoreError> {
    let settlement: Settlement = serde_json::from_str(content)
        .map_err(|e| StoreError::Corrupt(format!("stored settlement unreadable: {e}")))?;
    let accepted = accepted
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("settlements.accepted_breaks unreadable: {e}")))?;
    Ok(Stored {
        settlement,
        status: Status::parse(status)?,
        created_at,
        finalized_at,
        accepted,
    })
}

/// Adds one kind's count and points to the cycle's counts.
pub fn add_count(c: &mut Counts, kind: &str, n: i64, points: i64) {
    c.transactions += n;
    match kind {
        "earn" => c.earned += points,
        "burn" => c.burned += points,
        "reverse_burn" => c.burns_reversed += points,
        "reverse_earn" => c.earns_reversed += points,
        _ => {}
    }
}

/// The clearing and override queries whose SQL and types are the same on every backend, written
/// once, generic over the sqlx database. Each backend's `ClearingTx` and `Store` call these.
pub struct SharedSql<DB>(std::marker::PhantomData<DB>);

impl<DB> SharedSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    fn stored(row: &DB::Row) -> Result<Stored, StoreError> {
        use sqlx::Row;
        let status: String = row.try_get("status")?;
        let content: String = row.try_get("content")?;
        stored_from(
            &status,
            &content,
            row.try_get("created_at")?,
            row.try_get("finalized_at")?,
            row.try_get::<Option<String>, _>("accepted_breaks")?
                .as_deref(),
        )
    }

    fn date(column: &str, s: Option<String>) -> Result<Option<NaiveDate>, StoreError> {
        super::model::parse_date(column, s.as_deref())
    }

    /// The stored settlement of a cycle.
    pub async fn settlement(
        conn: &mut DB::Connection,
        cycle: NaiveDate,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(sql::SETTLEMENT)
            .bind(cycle.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(Self::stored).transpose()
    }

    /// The latest settlement before `cycle`.
    pub async fn latest_before(
        conn: &mut DB::Connection,
        cycle: NaiveDate,
    ) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query(sql::LATEST_BEFORE)
            .bind(cycle.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(Self::stored).transpose()
    }

    /// Settlements before `before` (all if `None`), newest first.
    pub async fn settlements(
        conn: &mut DB::Connection,
        before: Option<NaiveDate>,
        limit: i64,
    ) -> Result<Vec<Stored>, StoreError> {
        let before = before.map_or("9999-12-31".to_string(), |b| b.to_string());
        let rows = sqlx::query(sql::LIST)
            .bind(before)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::stored).collect()
    }

    /// The earliest cycle with transactions in (after, before).
    pub async fn first_activity(
        conn: &mut DB::Connection,
        after: Option<NaiveDate>,
        before: NaiveDate,
    ) -> Result<Option<NaiveDate>, StoreError> {
        let s: Option<String> = sqlx::query_scalar(sql::FIRST_ACTIVITY)
            .bind(after.map(|a| a.to_string()).unwrap_or_default())
            .bind(before.to_string())
            .fetch_one(&mut *conn)
            .await?;
        Self::date("transactions.cycle", s)
    }

    /// The earliest settlement after `cycle`.
    pub async fn first_after(
        conn: &mut DB::Connection,
        cycle: NaiveDate,
    ) -> Result<Option<NaiveDate>, StoreError> {
        let s: Option<String> = sqlx::query_scalar(sql::FIRST_AFTER)
            .bind(cycle.to_string())
            .fetch_one(&mut *conn)
            .await?;
        Self::date("settlements.cycle", s)
    }

    /// Books breakage of every lot expiring before `before` as facts of `cycle` and empties the
    /// lots. Returns the points swept.
    pub async fn sweep(
        conn: &mut DB::Connection,
        before: Micros,
        cycle: NaiveDate,
    ) -> Result<i64, StoreError> {
        let released: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM holds WHERE state = 'held' AND expires_at <= $1",
        )
        .bind(before)
        .fetch_one(&mut *conn)
        .await?;
        if released > 0 {
            for statement in sql::RELEASE_HOLDS {
                sqlx::query(statement)
                    .bind(before)
                    .execute(&mut *conn)
                    .await?;
            }
            // None are left here in a clearing run (its transaction gave them back, and counts
            // them, just before); kept so that the sweep alone never leaves a hold held.
        }
        sqlx::query(sql::SWEEP_FACTS)
            .bind(before)
            .bind(cycle.to_string())
            .execute(&mut *conn)
            .await?;
        let swept: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(points), 0) AS BIGINT) FROM breakage WHERE cycle = $1 AND txn_id IS NULL",
        )
        .bind(cycle.to_string())
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(sql::SWEEP_MEMBERS)
            .bind(before)
            .execute(&mut *conn)
            .await?;
        sqlx::query(sql::SWEEP)
            .bind(before)
            .execute(&mut *conn)
            .await?;
        Ok(swept)
    }

    /// Where clearing stands.
    pub async fn frontier(conn: &mut DB::Connection) -> Result<Frontier, StoreError> {
        use sqlx::Row;
        let row = sqlx::query(sql::FRONTIER).fetch_one(&mut *conn).await?;
        Ok(Frontier {
            latest_settled: Self::date("settlements.cycle", row.try_get(0)?)?,
            first_transaction: Self::date("transactions.cycle", row.try_get(1)?)?,
            confirmed_through: Self::date(
                "clearing_state.catch_up_confirmed_through",
                row.try_get(2)?,
            )?,
        })
    }

    /// Records an operator's confirmation of a long catch-up through `through`.
    pub async fn confirm_catch_up(
        conn: &mut DB::Connection,
        through: NaiveDate,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::CONFIRM_CATCH_UP)
            .bind(through.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// The cycle's counts, from `cycle_totals` and the sweep.
    pub async fn counts(conn: &mut DB::Connection, cycle: NaiveDate) -> Result<Counts, StoreError> {
        use sqlx::Row;
        let mut c = Counts::default();
        for r in sqlx::query(sql::COUNTS)
            .bind(cycle.to_string())
            .fetch_all(&mut *conn)
            .await?
        {
            let kind: String = r.try_get(0)?;
            add_count(&mut c, &kind, r.try_get(1)?, r.try_get(2)?);
        }
        c.expired = sqlx::query_scalar(sql::EXPIRED_IN)
            .bind(cycle.to_string())
            .fetch_one(&mut *conn)
            .await?;
        Ok(c)
    }

    /// Stores a draft (a final one is never touched).
    pub async fn save(conn: &mut DB::Connection, s: &Stored) -> Result<(), StoreError> {
        let st = &s.settlement;
        sqlx::query(sql::SAVE)
            .bind(st.cycle.to_string())
            .bind(st.digest.clone())
            .bind(st.previous_digest.clone())
            .bind(serde_json::to_string(st).map_err(|e| {
                StoreError::Corrupt(format!(
                    "settlement of {} does not serialise: {e}",
                    st.cycle
                ))
            })?)
            .bind(s.created_at)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Seals a cycle.
    pub async fn seal(conn: &mut DB::Connection, cycle: NaiveDate) -> Result<(), StoreError> {
        sqlx::query(sql::SEAL)
            .bind(cycle.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Every lot issued before `as_of` and what had become of its points by then.
    pub async fn lot_fates(
        conn: &mut DB::Connection,
        as_of: Micros,
    ) -> Result<Vec<LotFate>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(sql::LOT_FATES)
            .bind(as_of)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LotFate {
                    issuer: r.try_get(0)?,
                    earned_at: r.try_get(1)?,
                    points: r.try_get(2)?,
                    redeemed: r.try_get(3)?,
                    reversed: r.try_get(4)?,
                    expires_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Operators' overrides.
    pub async fn overrides(
        conn: &mut DB::Connection,
    ) -> Result<Vec<super::model::PartnerOverride>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(super::model::overrides_sql::LIST)
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::model::PartnerOverride {
                    partner: r.try_get(0)?,
                    per_second: r.try_get::<i64, _>(1)? as u32,
                    burst: r.try_get::<i64, _>(2)? as u32,
                    suspended: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Stores an operator's override.
    pub async fn save_override(
        conn: &mut DB::Connection,
        o: &super::model::PartnerOverride,
    ) -> Result<(), StoreError> {
        sqlx::query(super::model::overrides_sql::SAVE)
            .bind(o.partner.clone())
            .bind(o.per_second as i64)
            .bind(o.burst as i64)
            .bind(o.suspended)
            .bind(o.updated_at)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
