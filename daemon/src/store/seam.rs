//! The storage seam: [`Store`] (reads, the audit and the rare writes outside batches),
//! [`BatchBackend`] (the writer's backend) and [`LedgerTx`] (what the shared batch logic asks of
//! one write transaction).

use super::error::StoreError;
use super::model::{PartnerOverride, Rejection, Request, TxnRecord};
use super::{
    access, audit, batch, chain, clearing, consent, feed, holds, programme, reconciliation, report,
    responses, retention,
};
use crate::ledger::{MemberLedger, Micros, Receipt};
use async_trait::async_trait;

/// What a committed batch gives back: one answer per request, and (when `ctx.tell`) its events
/// as the feed reads them, in each partner's order.
#[derive(Debug, Default)]
pub struct Applied {
    /// One per request, in order.
    pub answers: Vec<Result<Receipt, Rejection>>,
    /// The events the batch committed, numbered.
    pub told: Vec<crate::events::Event>,
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
    ) -> Result<Applied, StoreError>;

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
    /// Reads a partner's event feed, or reads or changes the webhooks (`store::feed`).
    async fn feed(&self, call: feed::FeedCall) -> Result<feed::FeedReply, StoreError>;
    /// When the soonest hold still held runs out, if any hold is held (one index entry read).
    async fn soonest_hold_expiry(&self) -> Result<Option<Micros>, StoreError>;
    /// Gives back the points of every hold that ran out by `now`, each with its `hold.expired`
    /// event, in one write transaction (the daemon does it at each hold's expiry, so that the
    /// expiry is told at once whether or not its member is seen again). Returns how many.
    async fn expire_holds(&self, now: Micros) -> Result<u64, StoreError>;
    /// Records a version unless one takes effect at that instant; returns what is stored there.
    async fn add_price(
        &self,
        v: &crate::prices::PriceVersion,
    ) -> Result<crate::prices::PriceVersion, StoreError>;
}

/// Opens the writer's backend; awaited on the writer's own thread and runtime, so that its
/// connections belong there.
pub type OpenBackend = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Box<dyn BatchBackend>, StoreError>> + Send>,
>;
