//! The storage seam. The service code sees only [`Store`] (reads and the audit) and
//! [`writer::Writer`] (the group-commit queue for mutations). A backend fills in [`LedgerTx`]: load
//! rows for a batch and write back what the pure ledger decided, inside one database transaction.
//! The decision logic itself ([`batch`]) is shared by every backend.

pub mod access;
pub mod audit;
pub mod batch;
pub mod chain;
pub mod clearing;
pub mod consent;
pub mod holds;
pub mod lots;
pub mod matrix;
pub mod postgres;
pub mod programme;
pub mod reconciliation;
pub mod registry;
pub mod report;
pub mod responses;
pub mod retention;
pub mod rows;
pub mod sqlite;
pub mod writer;

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

use crate::ledger::{
    Allocation, Debt, Kind, Lot, MemberLedger, Micros, Receipt, Refusal, Reversible,
};
use async_trait::async_trait;
use rust_decimal::Decimal;

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

/// A mutation a partner asked for, validated and priced by the API layer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The calling partner (from its certificate).
    pub partner: String,
    /// The partner's own transaction id.
    pub transaction_id: String,
    /// SHA-256 of the request's content, to tell a retry from a reuse of the id.
    pub hash: [u8; 32],
    /// What to do.
    pub op: Op,
}

/// The ledger operation of a [`Request`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Grant points.
    Earn {
        /// The member.
        member: String,
        /// Points to grant (already computed from the purchase or the bonus).
        points: i64,
        /// The purchase, if the points came from one: amount and currency.
        purchase: Option<(Decimal, String)>,
        /// The purchase category the till sent (campaign conditions).
        category: Option<String>,
    },
    /// Spend points at the caller (priced by the writer at the instant it accepts the burn).
    Burn {
        /// The member.
        member: String,
        /// Points to spend.
        points: i64,
    },
    /// Take back points of one of the caller's earns.
    ReverseEarn {
        /// The partner's id of the earn.
        original: String,
        /// Points to take back; 0 for all that is left.
        points: i64,
    },
    /// Give back points of one of the caller's burns.
    ReverseBurn {
        /// The partner's id of the burn.
        original: String,
        /// Points to give back; 0 for all that is left.
        points: i64,
    },
    /// Reserve points for the caller until `expires_at` (a hold at the till).
    Authorize {
        /// The member.
        member: String,
        /// Points to reserve.
        points: i64,
        /// How long the hold runs, in microseconds.
        hold_for: Micros,
    },
    /// Turn all or part of one of the caller's holds into a burn; the rest is released.
    Capture {
        /// The partner's id of the authorization.
        authorization: String,
        /// Points to burn; 0 for the whole hold.
        points: i64,
    },
    /// Release one of the caller's holds.
    Void {
        /// The partner's id of the authorization.
        authorization: String,
    },
}

/// Why a request was refused. Nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The ledger refused (insufficient points, beyond what is left to reverse, …).
    #[error(transparent)]
    Ledger(#[from] Refusal),
    /// The member named was forgotten (`ForgetMember`): its id is never used again.
    #[error(
        "this member id was forgotten at the member's request; it cannot earn, spend or be read again"
    )]
    MemberForgotten,
    /// A reversal names a transaction the caller does not have.
    #[error("no transaction {0:?} of this partner")]
    UnknownTransaction(String),
    /// A reversal names a transaction of the wrong kind.
    #[error("transaction {id:?} is a {found:?}, not a {expected:?}")]
    WrongKind {
        /// The partner's id.
        id: String,
        /// What the reversal needs.
        expected: Kind,
        /// What the transaction is.
        found: Kind,
    },
    /// Nothing is left to reverse.
    #[error("transaction {0:?} is already fully reversed")]
    FullyReversed(String),
    /// The transaction id was already used for a request with other content.
    #[error("transaction id {0:?} was already used for a different request")]
    IdReused(String),
    /// No price version of the partner is in force (it cannot move money).
    #[error("partner {0:?} has no price in force")]
    Unpriced(String),
    /// The hold ran out before this capture: its points went back to the member.
    #[error("hold {id:?} ran out at {at}: its points went back to the member; authorize again")]
    HoldExpired {
        /// The partner's id of the authorization.
        id: String,
        /// RFC 3339.
        at: String,
    },
    /// The hold was already captured or voided by another call.
    #[error("hold {id:?} is already {state} (by transaction {by:?})")]
    HoldClosed {
        /// The partner's id of the authorization.
        id: String,
        /// `captured` or `voided`.
        state: &'static str,
        /// The partner's id of the call that closed it.
        by: String,
    },
    /// A capture asks for more than the hold reserved.
    #[error("hold {id:?} reserved {held} points, cannot capture {requested}")]
    BeyondHold {
        /// The partner's id of the authorization.
        id: String,
        /// Points held.
        held: i64,
        /// Points asked for.
        requested: i64,
    },
    /// The partner is retired: it no longer earns, burns or reverses.
    #[error(
        "partner {partner} retired at {since}: it can no longer earn, burn or reverse; its members' points and its settlements are unaffected"
    )]
    Retired {
        /// The partner.
        partner: String,
        /// RFC 3339.
        since: String,
    },
}

/// One stored transaction.
#[derive(Debug, Clone)]
pub struct TxnRecord {
    /// Ledger id.
    pub id: i64,
    /// The partner that made it.
    pub partner: String,
    /// The partner's own id.
    pub partner_txn_id: String,
    /// Kind.
    pub kind: Kind,
    /// The member.
    pub member: String,
    /// Points moved (positive).
    pub points: i64,
    /// Earns and burns: points reversed so far.
    pub reversed_points: i64,
    /// Earns: points reversed so far per part (the receipt's parts' order).
    pub parts_reversed: Vec<i64>,
    /// Reversals: the ledger id of the reversed transaction.
    pub original_id: Option<i64>,
    /// Earns from purchases: the amount (decimal string) and currency.
    pub purchase: Option<(String, String)>,
    /// Hash of the request content.
    pub request_hash: Vec<u8>,
    /// The first answer.
    pub receipt: Receipt,
    /// Acceptance instant.
    pub accepted_at: Micros,
}

/// Everything one batch changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Writes {
    /// The cycle every transaction and allocation of the batch belongs to.
    pub cycle: chrono::NaiveDate,
    /// New transactions.
    pub new_txns: Vec<TxnRecord>,
    /// Existing transactions whose reversed points changed: (id, reversed_points, per part as
    /// stored — `None` for a plain earn or a burn).
    pub reversed: Vec<(i64, i64, Option<String>)>,
    /// New or changed lots.
    pub lots: Vec<Lot>,
    /// New allocations.
    pub allocations: Vec<Allocation>,
    /// New or changed debts.
    pub debts: Vec<Debt>,
    /// Members seen for the first time, and members whose points left in open lots or kept
    /// activity changed.
    pub members: Vec<lots::MemberRow>,
    /// Per (partner, kind) of the new transactions: (partner, kind, transactions, points), added
    /// to the cycle's totals.
    pub cycle_totals: Vec<(String, &'static str, i64, i64)>,
    /// The cells of the cycle's gross matrix the new allocations add to.
    pub matrix: matrix::Cells,
    /// Breakage undone by earn reversals that took swept points back (negative facts).
    pub breakage: Vec<BreakageFact>,
    /// The issuance fee each earn was charged and each earn reversal refunded.
    pub issuance: Vec<IssuanceRow>,
    /// Members' programme state and vouchers the batch changed.
    pub programme: programme::ProgrammeWrites,
    /// Holds the batch opened or closed.
    pub holds: holds::HoldWrites,
    /// Append the batch's link to the ledger's hash chain (`store::chain`); off only in the bench
    /// that measures what the chain costs.
    pub chain: bool,
}

/// The issuance row of one earn (positive points) or earn reversal (negative points, refunded at
/// the fee its earn was charged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRow {
    /// The transaction.
    pub txn: i64,
    /// The issuing partner.
    pub issuer: String,
    /// Fee per point.
    pub fee_rate: Decimal,
    /// Points (negative for a reversal).
    pub points: i64,
}

/// One change of a lot's breakage in one cycle: a sweep (positive) or an earn reversal taking
/// swept points back (negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakageFact {
    /// The lot.
    pub lot: i64,
    /// Its member.
    pub member: String,
    /// Its issuer.
    pub issuer: String,
    /// Points (negative: breakage undone).
    pub points: i64,
    /// The earn reversal that undid it, if any.
    pub txn: Option<i64>,
}

/// What a backend does inside one write transaction for the shared batch logic.
#[async_trait]
pub trait LedgerTx: Send {
    /// The cycle a transaction committed now belongs to: `now_cycle`, or the first cycle after
    /// the last one sealed by a clearing run if that is later. Holds off clearing runs (a shared
    /// lock) until the transaction ends.
    async fn open_cycle(
        &mut self,
        now_cycle: chrono::NaiveDate,
    ) -> Result<chrono::NaiveDate, StoreError>;
    /// Locks these members (sorted, so that batches of several daemons never deadlock) until the
    /// transaction ends. A backend with a single writer has nothing to lock.
    async fn lock_members(&mut self, members: &[String]) -> Result<(), StoreError>;
    /// Transactions by (partner, partner's id).
    async fn find_transactions(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<TxnRecord>, StoreError>;
    /// Members, each with the points the batch may take from its lots at most, for a decision at
    /// `now`: their open debts and enough of their open lots ([`lots::LotsSql::load_members`]).
    /// Unknown members are absent.
    async fn load_members(
        &mut self,
        members: &[(String, i64)],
        now: Micros,
    ) -> Result<Vec<MemberLedger>, StoreError>;
    /// Lots by id (a lot's id is its earn's id, negated for the operator-funded lot).
    async fn load_lots(&mut self, ids: &[i64]) -> Result<Vec<Lot>, StoreError>;
    /// The allocations of these burns, in the order made, with what is left to reverse of each.
    async fn load_burn_slices(&mut self, burn_txns: &[i64]) -> Result<Vec<Reversible>, StoreError>;
    /// Campaigns in force at `now`.
    async fn live_campaigns(
        &mut self,
        now: Micros,
    ) -> Result<Vec<crate::programme::Campaign>, StoreError>;
    /// The stored programme text of these members (see [`programme::ProgrammeSql::load`]).
    async fn load_programme(
        &mut self,
        members: &[String],
    ) -> Result<std::collections::HashMap<String, Option<String>>, StoreError>;
    /// Which (member, partner) pairs have an earn.
    async fn earned_before(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError>;
    /// Holds whose authorization id or closing call's id is one of `keys` (see
    /// [`holds::HoldsSql::find`]).
    async fn find_holds(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<holds::HoldRecord>, StoreError>;
    /// The holds named by `keys` and those still held of `members`, with their slices (see
    /// [`holds::HoldsSql::named_or_open`]).
    async fn holds_of(
        &mut self,
        keys: &[(String, String)],
        members: &[String],
    ) -> Result<Vec<holds::HoldRecord>, StoreError>;
    /// `n` fresh transaction ids, increasing.
    async fn reserve_txn_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError>;
    /// Of these pseudonyms, those of forgotten members (read after the members are locked).
    async fn forgotten(
        &mut self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError>;
    /// Writes the batch's changes.
    async fn write(&mut self, writes: &Writes) -> Result<(), StoreError>;
}

/// A backend that applies batches (owned by the writer task).
#[async_trait]
pub trait BatchBackend: Send {
    /// Applies `requests` in one durable transaction at `now`: either everything it accepted is
    /// committed, or it returns an error and nothing is.
    async fn apply_batch(
        &mut self,
        requests: &[Request],
        ctx: &batch::Context,
    ) -> Result<Vec<Result<Receipt, Rejection>>, StoreError>;

    /// Makes the backend usable again after a batch panicked half-way (its transaction guard was
    /// dropped, so nothing of the batch is applied).
    async fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads and audits, shared by all calls.
#[async_trait]
pub trait Store: Send + Sync {
    /// A member's open lots and debts, or `None` if the member never earned.
    async fn member(&self, member: &str) -> Result<Option<MemberLedger>, StoreError>;
    /// Enough of a member for its balance and next expiry at `now` (its kept open points, debts
    /// and first lots; every lot only when those cannot say): a partner's read stays cheap
    /// however many lots the member holds. Not for views that list every lot.
    async fn member_at(
        &self,
        member: &str,
        now: Micros,
    ) -> Result<Option<MemberLedger>, StoreError>;
    /// One of a partner's transactions by its own id.
    async fn transaction(
        &self,
        partner: &str,
        partner_txn_id: &str,
    ) -> Result<Option<TxnRecord>, StoreError>;
    /// A partner's transactions with a member, newest first, strictly before `before`
    /// (accepted_at, id) if given.
    async fn activity(
        &self,
        partner: &str,
        member: &str,
        before: Option<(Micros, i64)>,
        limit: i64,
    ) -> Result<Vec<TxnRecord>, StoreError>;
    /// Checks the ledger invariants at `now`, and recomputes every stored settlement from the
    /// ledger under `rules`.
    async fn audit(
        &self,
        now: Micros,
        rules: &clearing::Rules,
    ) -> Result<audit::Report, StoreError>;
    /// Whether the database answers (a `SELECT 1` on the read pool): for health.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The read pool's connections: (open, idle).
    fn pool_connections(&self) -> (u32, usize);
    /// Recomputes the ledger's hash chain from the rows (`store::chain::verify`), in one snapshot.
    async fn verify_chain(&self) -> Result<chain::ChainReport, StoreError>;
    /// Transactions in the ledger, all partners (for tests and operators).
    async fn transaction_count(&self) -> Result<i64, StoreError>;
    /// Runs a clearing (see [`clearing::run`]) in one transaction. `Ok(None)`: skipped because
    /// another daemon is clearing.
    async fn run_clearing(
        &self,
        plan: &clearing::Plan,
    ) -> Result<Option<clearing::Stored>, clearing::ClearingError>;
    /// A stored settlement.
    async fn settlement(
        &self,
        cycle: chrono::NaiveDate,
    ) -> Result<Option<clearing::Stored>, StoreError>;
    /// Settlements strictly before `before` (all if `None`), newest first.
    async fn settlements(
        &self,
        before: Option<chrono::NaiveDate>,
        limit: i64,
    ) -> Result<Vec<clearing::Stored>, StoreError>;
    /// Reconciliation with partners' records, its breaks, and the finalization of a settlement
    /// (which refuses open breaks unless finance accepts them): `store::reconciliation`, in one
    /// write transaction.
    async fn reconciliation(
        &self,
        call: reconciliation::ReconCall,
    ) -> Result<reconciliation::ReconReply, StoreError>;
    /// The allocations behind a partner's amounts in a cycle.
    async fn statement_lines(
        &self,
        cycle: chrono::NaiveDate,
        partner: &str,
    ) -> Result<Vec<coalition_clearing::export::StatementLine>, StoreError>;
    /// Every lot issued before `as_of` and its fate by then, for the liability report.
    async fn lot_fates(&self, as_of: Micros) -> Result<Vec<clearing::LotFate>, StoreError>;
    /// The sums of a programme report (`store::report`).
    async fn kpi_facts(&self, q: &report::KpiQuery) -> Result<crate::report::KpiFacts, StoreError>;
    /// Of these pseudonyms (`privacy::MemberKey::pseudonym` of ids a call names), those of
    /// forgotten members.
    async fn forgotten(
        &self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError>;
    /// Forgets a member (`retention::forget`): one write transaction that holds out every batch.
    async fn forget_member(
        &self,
        f: &retention::Forget,
    ) -> Result<retention::Forgotten, StoreError>;
    /// Records a partner's answer to a final settlement (`store::responses`).
    async fn answer_settlement(
        &self,
        a: &responses::Answer,
    ) -> Result<responses::Answer, StoreError>;
    /// Each partner's answer to `cycle`'s settlement, as it stands.
    async fn settlement_answers(&self, cycle: &str) -> Result<Vec<responses::Answer>, StoreError>;
    /// The cells of a cohort table (`store::report`).
    async fn cohort_cells(
        &self,
        q: &report::KpiQuery,
    ) -> Result<Vec<(crate::report::Month, i64, i64)>, StoreError>;
    /// Appends a read of a member's data to the access log (before the data is shown).
    async fn log_access(&self, entry: &access::AccessEntry) -> Result<(), StoreError>;
    /// Records a consent change (idempotent by its actor and request id).
    async fn set_consent(
        &self,
        change: &consent::ConsentChange,
    ) -> Result<consent::ConsentOutcome, StoreError>;
    /// A member's consents, as last recorded.
    async fn consents(&self, member: &str) -> Result<Vec<consent::ConsentRecord>, StoreError>;
    /// Replaces the ids of members with no transaction since `cutoff` by pseudonyms (at most
    /// [`retention::MAX_PER_RUN`] a run). Returns how many.
    async fn pseudonymize_inactive(&self, cutoff: Micros, now: Micros)
    -> Result<usize, StoreError>;
    /// Removes access log entries older than `cutoff`. Returns how many.
    async fn prune_access_log(&self, cutoff: Micros) -> Result<u64, StoreError>;
    /// Operators' overrides of partners' limits and status.
    async fn partner_overrides(&self) -> Result<Vec<PartnerOverride>, StoreError>;
    /// Announces this daemon (`id`, its traffic as JSON) at `now` (unix micros), forgets daemons
    /// silent for an hour, and returns every daemon heard since `live_after`, this one included:
    /// (id, traffic).
    async fn heartbeat(
        &self,
        id: &str,
        now: Micros,
        traffic: &str,
        live_after: Micros,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Removes this daemon's announcement (it stops).
    async fn leave(&self, id: &str) -> Result<(), StoreError>;
    /// Stores an override (replacing the partner's previous one).
    async fn save_partner_override(&self, o: &PartnerOverride) -> Result<(), StoreError>;
    /// Where clearing stands.
    async fn clearing_frontier(&self) -> Result<clearing::Frontier, StoreError>;
    /// Records an operator's confirmation of a long catch-up.
    async fn confirm_catch_up(&self, through: chrono::NaiveDate) -> Result<(), StoreError>;
    /// The start-up sync with the config, in one transaction (see [`registry::RegistrySql::sync`]).
    async fn sync_registry(
        &self,
        sync: &crate::prices::Sync,
    ) -> Result<crate::prices::Synced, StoreError>;
    /// Every partner the coalition has had.
    async fn partners(&self) -> Result<Vec<crate::prices::PartnerRecord>, StoreError>;
    /// Every price version.
    async fn price_versions(&self) -> Result<Vec<crate::prices::PriceVersion>, StoreError>;
    /// Reads holds (what a member has held, one hold).
    async fn holds(&self, call: holds::HoldsCall) -> Result<holds::HoldsReply, StoreError>;
    /// Reads or changes the programme (campaigns, a member's programme state).
    async fn programme(
        &self,
        call: programme::ProgrammeCall,
    ) -> Result<programme::ProgrammeReply, StoreError>;
    /// Records a version unless one takes effect at that instant; returns what is stored there.
    async fn add_price(
        &self,
        v: &crate::prices::PriceVersion,
    ) -> Result<crate::prices::PriceVersion, StoreError>;
}

/// An operator's override of a partner's quota and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerOverride {
    /// Partner id.
    pub partner: String,
    /// Requests per second.
    pub per_second: u32,
    /// Burst.
    pub burst: u32,
    /// Suspended.
    pub suspended: bool,
    /// When it was set.
    pub updated_at: Micros,
}

/// The daemons of one database (`daemon_instances`): SQL once for both backends.
pub mod instances {
    use super::{Micros, StoreError};

    /// See [`super::Store::heartbeat`].
    pub async fn heartbeat<DB>(
        conn: &mut DB::Connection,
        id: &str,
        now: Micros,
        traffic: &str,
        live_after: Micros,
    ) -> Result<Vec<(String, String)>, StoreError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
        String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
        (String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    {
        sqlx::query(
            "INSERT INTO daemon_instances (id, heartbeat_at, traffic) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, traffic = excluded.traffic",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(traffic.to_string())
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM daemon_instances WHERE heartbeat_at < $1")
            .bind(now - 3_600_000_000)
            .execute(&mut *conn)
            .await?;
        Ok(sqlx::query_as(
            "SELECT id, traffic FROM daemon_instances WHERE heartbeat_at > $1 ORDER BY id",
        )
        .bind(live_after)
        .fetch_all(&mut *conn)
        .await?)
    }

    /// See [`super::Store::leave`].
    pub async fn leave<DB>(conn: &mut DB::Connection, id: &str) -> Result<(), StoreError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
        String: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    {
        sqlx::query("DELETE FROM daemon_instances WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// SQL of the overrides, shared by the backends.
pub mod overrides_sql {
    /// All overrides.
    pub const LIST: &str =
        "SELECT partner_id, per_second, burst, suspended, updated_at FROM partner_overrides";
    /// Insert or replace one.
    pub const SAVE: &str = "INSERT INTO partner_overrides (partner_id, per_second, burst, suspended, updated_at) \
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (partner_id) DO UPDATE SET per_second = excluded.per_second, \
        burst = excluded.burst, suspended = excluded.suspended, updated_at = excluded.updated_at";
}

/// The cycle a commit belongs to: the cycle of its instant, or the first one after the last sealed.
pub fn first_open_cycle(
    now_cycle: chrono::NaiveDate,
    sealed_through: Option<&str>,
) -> Result<chrono::NaiveDate, StoreError> {
    match parse_date("clearing_state.sealed_through", sealed_through)? {
        Some(sealed) if sealed >= now_cycle => coalition_clearing::next_day(sealed)
            .map_err(|e| StoreError::Corrupt(format!("clearing_state.sealed_through: {e}"))),
        _ => Ok(now_cycle),
    }
}

/// A stored business date; a value that is not one is corruption, never "nothing".
pub fn parse_date(column: &str, s: Option<&str>) -> Result<Option<chrono::NaiveDate>, StoreError> {
    s.map(|s| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| StoreError::Corrupt(format!("{column} holds {s:?}, not a date")))
    })
    .transpose()
}

/// Receipt slices as stored: `issuer:points;issuer:points` (partner ids hold neither `:` nor `;`).
pub fn encode_slices(slices: &[(String, i64)]) -> String {
    let parts: Vec<String> = slices.iter().map(|(i, p)| format!("{i}:{p}")).collect();
    parts.join(";")
}

/// An earn's points reversed per part as stored: nothing for a plain earn (or any other kind).
pub fn encode_parts_reversed(t: &TxnRecord) -> Option<String> {
    if t.kind != Kind::Earn || crate::ledger::Part::is_plain(&t.receipt.parts) {
        return None;
    }
    serde_json::to_string(&t.parts_reversed).ok()
}

/// Reads stored receipt slices back.
pub fn decode_slices(s: &str) -> Result<Vec<(String, i64)>, StoreError> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    s.split(';')
        .map(|part| {
            let (issuer, points) = part
                .split_once(':')
                .ok_or_else(|| StoreError::Corrupt(format!("bad slices {s:?}")))?;
            let points = points
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("bad slices {s:?}")))?;
            Ok((issuer.to_string(), points))
        })
        .collect()
}

/// Opens the writer's backend; awaited on the writer's own thread and runtime, so that its
/// connections belong there.
pub type OpenBackend = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn BatchBackend>, StoreError>> + Send>,
>;

/// Creates (if needed) and migrates the database at `url`, then closes every connection to it
/// (the bench's preload writes into it straight, and PostgreSQL copies it as a template).
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut c = sqlx::PgConnection::connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&mut c).await?;
        c.close().await?;
    } else {
        let mut c = sqlx::SqliteConnection::connect_with(&sqlite::options(url)?).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut c).await?;
        c.close().await?;
    }
    Ok(())
}

/// Opens the store a database URL names: the reader shared by calls, and the opener of the backend
/// the writer owns.
pub async fn open(url: &str) -> Result<(std::sync::Arc<dyn Store>, OpenBackend), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (store, writer) = postgres::open(url).await?;
        let writer: OpenBackend =
            Box::pin(async move { Ok(Box::new(writer.await?) as Box<dyn BatchBackend>) });
        return Ok((std::sync::Arc::new(store), writer));
    }
    let (store, writer) = sqlite::open(url).await?;
    let writer: OpenBackend =
        Box::pin(async move { Ok(Box::new(writer.await?) as Box<dyn BatchBackend>) });
    Ok((std::sync::Arc::new(store), writer))
}
