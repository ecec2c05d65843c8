//! The one store body: every read, audit and rare write ([`SqlStore`]), every batch
//! ([`SqlBackend`], [`SqlTx`]) and every clearing run ([`SqlClearing`]) of both backends, written
//! once over sqlx's database. Where SQLite and PostgreSQL differ the code asks its
//! [`Dialect`]; a backend's own file only opens its pools (and, for SQLite, keeps its WAL).

use super::batch::{self, LedgerTx};
use super::bulk::{in_list, insert, value_rows};
use super::dialect::{Dialect, MAX_BINDS};
use super::error::StoreError;
use super::model::{PartnerOverride, Request, TxnRecord, Writes, first_open_cycle};
use super::seam::{Applied, BatchBackend, Store};
use super::{
    access, audit, chain, clearing, consent, feed, holds, instances, lots, matrix, programme,
    reconciliation, registry, report, responses, retention, rows,
};
use crate::events::{EventType, NewEvent, Payload};
use crate::ledger::{Lot, MemberLedger, Micros, Reversible};
use async_trait::async_trait;
use sqlx::{Pool, Row};
use std::time::Duration;

/// `impl<DB> … where DB: <what the store's queries need of a database>`: the bounds are written
/// here once, for every impl of the body. (Bounds on a trait's where clause are not implied where
/// the trait is used, so a trait cannot carry them.)
macro_rules! sql_impl {
    ($(#[$attr:meta])* impl $($rest:tt)*) => {
        sql_impl!(@head [$(#[$attr])*] [] $($rest)*);
    };
    (@head [$($attr:tt)*] [$($head:tt)*] { $($body:tt)* }) => {
        $($attr)*
        impl<DB> $($head)*
        where
            DB: Dialect,
            for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
            for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
            bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            Option<i32>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
            (String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
            DB::QueryResult: registry::RowsAffected,
            usize: sqlx::ColumnIndex<DB::Row>,
            for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
        {
            $($body)*
        }
    };
    (@head [$($attr:tt)*] [$($head:tt)*] $next:tt $($rest:tt)*) => {
        sql_impl!(@head [$($attr)*] [$($head)* $next] $($rest)*);
    };
}

/// How often a batch that lost a race to another daemon is run again before its callers get
/// `UNAVAILABLE`.
const MAX_ATTEMPTS: u32 = 10;

/// Reads, the audit, clearing runs and the rare writes outside batches, on one database.
pub struct SqlStore<DB: sqlx::Database> {
    /// Reads (on SQLite: read-only connections).
    read: Pool<DB>,
    /// Rare writes (on SQLite: the one connection besides the batch writer's).
    write: Pool<DB>,
}

impl<DB: sqlx::Database> SqlStore<DB> {
    /// A store reading through `read` and writing through `write` (they may be one pool).
    pub fn new(read: Pool<DB>, write: Pool<DB>) -> Self {
        SqlStore { read, write }
    }
}

sql_impl! {
    impl SqlStore<DB> {
        /// A write transaction outside the batch writer (rolled back if dropped).
        async fn begin_write(&self) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
            Ok(self.write.begin_with(DB::BEGIN_WRITE).await?)
        }

        /// A write transaction serialised with every other writer of `table` (across daemons).
        async fn begin_serialized(
            &self,
            table: &str,
        ) -> Result<sqlx::Transaction<'static, DB>, StoreError> {
            let mut tx = self.begin_write().await?;
            DB::serialize_writes(&mut tx, table).await?;
            Ok(tx)
        }
    }
}

sql_impl! {
    #[async_trait]
    impl Store for SqlStore<DB> {
        async fn member(&self, member: &str) -> Result<Option<MemberLedger>, StoreError> {
            let mut c = self.read.acquire().await?;
            Ok(lots::LotsSql::<DB>::member_whole(&mut c, member).await?)
        }

        async fn member_at(
            &self,
            member: &str,
            now: Micros,
        ) -> Result<Option<MemberLedger>, StoreError> {
            let mut c = self.read.acquire().await?;
            Ok(lots::LotsSql::<DB>::member_at(&mut c, member, now).await?)
        }

        async fn transaction(
            &self,
            partner: &str,
            partner_txn_id: &str,
        ) -> Result<Option<TxnRecord>, StoreError> {
            let mut c = self.read.acquire().await?;
            rows::TxnReads::<DB>::transaction(&mut c, partner, partner_txn_id).await
        }

        async fn activity(
            &self,
            partner: &str,
            member: &str,
            before: Option<(Micros, i64)>,
            limit: i64,
        ) -> Result<Vec<TxnRecord>, StoreError> {
            let mut c = self.read.acquire().await?;
            rows::TxnReads::<DB>::activity(&mut c, partner, member, before, limit).await
        }

        async fn heartbeat(
            &self,
            id: &str,
            now: Micros,
            traffic: &str,
            live_after: Micros,
        ) -> Result<Vec<(String, String)>, StoreError> {
            if !DB::SHARED {
                // One daemon serves the database: it is alone, and its limits are whole.
                return Ok(vec![(id.to_string(), traffic.to_string())]);
            }
            let mut c = self.read.acquire().await?;
            instances::heartbeat::<DB>(&mut c, id, now, traffic, live_after).await
        }

        async fn leave(&self, id: &str) -> Result<(), StoreError> {
            if !DB::SHARED {
                return Ok(());
            }
            let mut c = self.read.acquire().await?;
            instances::leave::<DB>(&mut c, id).await
        }

        fn pool_connections(&self) -> (u32, usize) {
            (self.read.size(), self.read.num_idle())
        }

        async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(&self.read).await?;
            Ok(())
        }

        async fn verify_chain(&self) -> Result<chain::ChainReport, StoreError> {
            let mut tx = self.read.begin().await?;
            DB::snapshot(&mut tx).await?;
            let report = chain::verify::<DB>(&mut tx).await?;
            tx.rollback().await?;
            Ok(report)
        }

        async fn audit(
            &self,
            now: Micros,
            rules: &clearing::Rules,
        ) -> Result<audit::Report, StoreError> {
            // One snapshot for every figure.
            let mut tx = self.read.begin().await?;
            DB::snapshot(&mut tx).await?;
            let mut report = audit::run::<DB>(&mut tx, now).await?;
            let mut all = clearing::SharedSql::<DB>::settlements(&mut tx, None, i64::MAX).await?;
            all.reverse();
            let mut clearing_tx = SqlClearing::<DB> {
                conn: &mut tx,
                at: now,
                expired_holds: 0,
            };
            let violations = clearing::verify(&mut clearing_tx, rules, &all).await?;
            report.violations.extend(violations);
            report.settlements = all.len() as i64;
            let chain = chain::verify::<DB>(&mut tx).await?;
            report.chain_links = chain.links;
            report.before_chain = chain.before_chain;
            report.violations.extend(chain.violations);
            report.violations.extend(access::verify::<DB>(&mut tx).await?);
            report
                .violations
                .extend(registry::RegistrySql::<DB>::verify_prices(&mut tx).await?);
            tx.rollback().await?;
            Ok(report)
        }

        async fn transaction_count(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM transactions")
                .fetch_one(&self.read)
                .await?)
        }

        async fn run_clearing(
            &self,
            plan: &clearing::Plan,
        ) -> Result<Option<clearing::Stored>, clearing::ClearingError> {
            // The guard rolls back when dropped: an error, a panic or a cancelled call leaves
            // nothing open behind it.
            let mut tx = self.begin_write().await?;
            let mut run = SqlClearing::<DB> {
                conn: &mut tx,
                at: plan.now,
                expired_holds: 0,
            };
            let out = clearing::run(&mut run, plan).await?;
            let expired_holds = run.expired_holds;
            // A cycle sealed by this run: each partner in it has its statement ready.
            if let Some(s) = &out
                && s.created_at == plan.now
            {
                let ready = settlement_events(s, EventType::StatementReady, "");
                feed::FeedSql::<DB>::append(&mut tx, plan.now, &ready)
                    .await
                    .map_err(StoreError::from)?;
            }
            tx.commit().await.map_err(StoreError::from)?;
            if expired_holds > 0 {
                metrics::counter!("coalition_holds_total", "event" => "expired")
                    .increment(expired_holds);
            }
            Ok(out)
        }

        async fn settlement(
            &self,
            cycle: chrono::NaiveDate,
        ) -> Result<Option<clearing::Stored>, StoreError> {
            let mut c = self.read.acquire().await?;
            clearing::SharedSql::<DB>::settlement(&mut c, cycle).await
        }

        async fn settlements(
            &self,
            before: Option<chrono::NaiveDate>,
            limit: i64,
        ) -> Result<Vec<clearing::Stored>, StoreError> {
            let mut c = self.read.acquire().await?;
            clearing::SharedSql::<DB>::settlements(&mut c, before, limit).await
        }

        async fn reconciliation(
            &self,
            call: reconciliation::ReconCall,
        ) -> Result<reconciliation::ReconReply, StoreError> {
            // Submissions, resolutions and finalizations of every daemon are serialised (rare
            // writes; reads of the ledger are not blocked), so a finalization sees every break.
            use reconciliation::{Finalized, ReconCall, ReconReply};
            let mut tx = self.begin_serialized("reconciliation_breaks").await?;
            // What a submission finds is told as the breaks that were not open before it.
            let open_before = match &call {
                ReconCall::Submit(s) => open_breaks(
                    reconciliation::ReconSql::<DB>::run(
                        &mut tx,
                        ReconCall::List {
                            cycle: s.cycle.clone(),
                            partner: Some(s.partner.clone()),
                        },
                    )
                    .await?,
                ),
                _ => Default::default(),
            };
            let (at, resolving) = match &call {
                ReconCall::Submit(s) => (s.at, None),
                ReconCall::Resolve { at, cycle, .. } => (*at, Some(cycle.clone())),
                ReconCall::Finalize { now, .. } => (*now, None),
                ReconCall::List { .. } => (0, None),
            };
            let out = reconciliation::ReconSql::<DB>::run(&mut tx, call).await?;
            let events: Vec<NewEvent> = match &out {
                ReconReply::Reports(reports) => reports
                    .iter()
                    .flat_map(|r| r.breaks.iter().map(move |b| (r, b)))
                    .filter(|(_, b)| b.resolved_at.is_empty() && !open_before.contains(&break_key(b)))
                    .map(|(r, b)| break_event(EventType::BreakFound, &r.cycle, b))
                    .collect(),
                ReconReply::Resolved(Some(b)) if b.resolved_at == crate::clock::rfc3339(at) => {
                    let cycle = resolving.unwrap_or_default();
                    vec![break_event(EventType::BreakResolved, &cycle, b)]
                }
                ReconReply::Finalized(Finalized::Done(s)) if s.finalized_at == Some(at) => {
                    settlement_events(s, EventType::SettlementFinalized, "")
                }
                _ => Vec::new(),
            };
            feed::FeedSql::<DB>::append(&mut tx, at, &events).await?;
            tx.commit().await?;
            Ok(out)
        }

        async fn statement_lines(
            &self,
            cycle: chrono::NaiveDate,
            partner: &str,
        ) -> Result<Vec<coalition_clearing::export::StatementLine>, StoreError> {
            let rows = sqlx::query(clearing::sql::STATEMENT)
                .bind(cycle.to_string())
                .bind(partner.to_string())
                .fetch_all(&self.read)
                .await?;
            Ok(rows
                .iter()
                .map(rows::Rows::<DB>::statement_line)
                .collect::<Result<_, _>>()?)
        }

        async fn lot_fates(&self, as_of: Micros) -> Result<Vec<clearing::LotFate>, StoreError> {
            let mut c = self.read.acquire().await?;
            clearing::SharedSql::<DB>::lot_fates(&mut c, as_of).await
        }

        async fn kpi_facts(
            &self,
            q: &report::KpiQuery,
        ) -> Result<crate::report::KpiFacts, StoreError> {
            let mut c = self.read.acquire().await?;
            report::ReportSql::<DB>::kpi_facts(&mut c, q, DB::PROGRAMME_TIER).await
        }

        async fn forgotten(
            &self,
            pseudonyms: &[String],
        ) -> Result<std::collections::HashSet<String>, StoreError> {
            let mut c = self.read.acquire().await?;
            retention::forgotten::<DB>(&mut c, pseudonyms).await
        }

        async fn forget_member(
            &self,
            f: &retention::Forget,
        ) -> Result<retention::Forgotten, StoreError> {
            let mut tx = self.begin_write().await?;
            // Every batch and every access-log append is held out until the member is gone:
            // none can write the old id after this commits.
            DB::hold_out_writers(&mut tx).await?;
            let out = retention::forget::<DB>(&mut tx, f).await?;
            tx.commit().await?;
            // What the database keeps of the old bytes outside its tables goes too: on a repeat
            // as well, so that a forget whose emptying a long read held up can be run again.
            let mut c = self.write.acquire().await?;
            if !DB::scrub(&mut c).await? {
                tracing::warn!(
                    "the WAL could not be emptied after a forget (a long read held it up): it may \
                     still hold the member's old pages; run the same ForgetMember again to empty it"
                );
            }
            Ok(out)
        }

        async fn answer_settlement(
            &self,
            a: &responses::Answer,
        ) -> Result<responses::Answer, StoreError> {
            // Answers of every daemon are serialised (rare writes; reads are not blocked).
            let mut tx = self.begin_serialized("settlement_responses").await?;
            let out = responses::answer::<DB>(&mut tx, a).await?;
            // A new answer (a repeat returns the first, unchanged, and tells nothing).
            if out == *a {
                let cycle = parse_cycle(&a.cycle)?;
                if let Some(s) = clearing::SharedSql::<DB>::settlement(&mut tx, cycle).await? {
                    let kind = if a.state == "disputed" {
                        EventType::SettlementDisputed
                    } else {
                        EventType::SettlementAcknowledged
                    };
                    let event = settlement_events(&s, kind, &a.reason)
                        .into_iter()
                        .filter(|e| e.partner == a.partner)
                        .collect::<Vec<_>>();
                    feed::FeedSql::<DB>::append(&mut tx, a.at, &event).await?;
                }
            }
            tx.commit().await?;
            Ok(out)
        }

        async fn settlement_answers(
            &self,
            cycle: &str,
        ) -> Result<Vec<responses::Answer>, StoreError> {
            let mut c = self.read.acquire().await?;
            responses::states::<DB>(&mut c, cycle).await
        }

        async fn cohort_cells(
            &self,
            q: &report::KpiQuery,
        ) -> Result<Vec<(crate::report::Month, i64, i64)>, StoreError> {
            let mut c = self.read.acquire().await?;
            report::ReportSql::<DB>::cohort_cells(&mut c, q).await
        }

        async fn log_access(&self, entry: &access::AccessEntry) -> Result<(), StoreError> {
            // Appends from every daemon are serialised; readers are not blocked.
            let mut tx = self.begin_serialized("access_log").await?;
            access::append::<DB>(&mut tx, entry).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn set_consent(
            &self,
            change: &consent::ConsentChange,
        ) -> Result<consent::ConsentOutcome, StoreError> {
            // Two daemons racing on one request id: the loser's insert fails on the key; running
            // it again finds the winner's event and answers as a retry.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = self.begin_write().await?;
                match consent::record::<DB>(&mut tx, change).await {
                    Ok(out) => {
                        tx.commit().await?;
                        return Ok(out);
                    }
                    Err(StoreError::Refused(_)) if attempt < 3 => continue,
                    Err(e) => return Err(e),
                }
            }
        }

        async fn consents(&self, member: &str) -> Result<Vec<consent::ConsentRecord>, StoreError> {
            let mut c = self.read.acquire().await?;
            consent::list::<DB>(&mut c, member).await
        }

        async fn pseudonymize_inactive(
            &self,
            cutoff: Micros,
            now: Micros,
        ) -> Result<usize, StoreError> {
            let mut tx = self.begin_write().await?;
            let due = retention::inactive::<DB>(&mut tx, cutoff).await?;
            // Lock them as batches do, then look again: one may have come back meanwhile.
            DB::lock_members(&mut tx, &due).await?;
            let still: Vec<String> = retention::inactive::<DB>(&mut tx, cutoff)
                .await?
                .into_iter()
                .filter(|m| due.contains(m))
                .collect();
            for m in &still {
                retention::pseudonymize::<DB>(&mut tx, m, now).await?;
            }
            tx.commit().await?;
            Ok(still.len())
        }

        async fn prune_access_log(&self, cutoff: Micros) -> Result<u64, StoreError> {
            let mut tx = self.begin_serialized("access_log").await?;
            let n = access::prune::<DB>(&mut tx, cutoff).await?;
            tx.commit().await?;
            Ok(n)
        }

        async fn partner_overrides(&self) -> Result<Vec<PartnerOverride>, StoreError> {
            let mut c = self.read.acquire().await?;
            clearing::SharedSql::<DB>::overrides(&mut c).await
        }

        async fn save_partner_override(&self, o: &PartnerOverride) -> Result<(), StoreError> {
            let mut c = self.write.acquire().await?;
            clearing::SharedSql::<DB>::save_override(&mut c, o).await
        }

        async fn clearing_frontier(&self) -> Result<clearing::Frontier, StoreError> {
            let mut c = self.read.acquire().await?;
            clearing::SharedSql::<DB>::frontier(&mut c).await
        }

        async fn confirm_catch_up(&self, through: chrono::NaiveDate) -> Result<(), StoreError> {
            let mut c = self.write.acquire().await?;
            clearing::SharedSql::<DB>::confirm_catch_up(&mut c, through).await
        }

        async fn sync_registry(
            &self,
            sync: &crate::prices::Sync,
        ) -> Result<crate::prices::Synced, StoreError> {
            let mut tx = self.begin_write().await?;
            let done = registry::RegistrySql::<DB>::sync(&mut tx, sync).await?;
            tx.commit().await?;
            Ok(done)
        }

        async fn partners(&self) -> Result<Vec<crate::prices::PartnerRecord>, StoreError> {
            let mut c = self.read.acquire().await?;
            registry::RegistrySql::<DB>::partners(&mut c).await
        }

        async fn price_versions(&self) -> Result<Vec<crate::prices::PriceVersion>, StoreError> {
            let mut c = self.read.acquire().await?;
            registry::RegistrySql::<DB>::price_versions(&mut c).await
        }

        async fn holds(&self, call: holds::HoldsCall) -> Result<holds::HoldsReply, StoreError> {
            let mut c = self.read.acquire().await?;
            holds::HoldsSql::<DB>::call(&mut c, call).await
        }

        async fn programme(
            &self,
            call: programme::ProgrammeCall,
        ) -> Result<programme::ProgrammeReply, StoreError> {
            use programme::ProgrammeCall;
            if matches!(
                call,
                ProgrammeCall::Create(_) | ProgrammeCall::End { .. } | ProgrammeCall::Redeem { .. }
            ) {
                let at = match &call {
                    ProgrammeCall::Redeem { now, .. } => Some(*now),
                    _ => None,
                };
                let mut tx = self.begin_write().await?;
                let out = programme::ProgrammeSql::<DB>::call(&mut tx, call).await?;
                if let (programme::ProgrammeReply::Redeemed(Ok(v)), Some(at)) = (&out, at)
                    && v.redeemed_at == Some(at)
                {
                    let event = NewEvent {
                        partner: v.partner.clone(),
                        event_type: EventType::VoucherRedeemed,
                        member: Some(v.member.clone()),
                        payload: Payload::Voucher {
                            voucher_id: v.id.clone(),
                            what: v.what.clone(),
                            issued_at: v.issued_at,
                            expires_at: v.expires_at,
                            redeemed_at: v.redeemed_at,
                            redemption_id: v.redeemed_by.clone(),
                        },
                    };
                    feed::FeedSql::<DB>::append(&mut tx, at, &[event]).await?;
                }
                tx.commit().await?;
                return Ok(out);
            }
            let mut c = self.read.acquire().await?;
            programme::ProgrammeSql::<DB>::call(&mut c, call).await
        }

        async fn feed(&self, call: feed::FeedCall) -> Result<feed::FeedReply, StoreError> {
            use feed::FeedCall;
            let reads = matches!(
                call,
                FeedCall::Page { .. } | FeedCall::Bounds { .. } | FeedCall::Webhooks
            );
            if reads {
                let mut c = self.read.acquire().await?;
                return feed::FeedSql::<DB>::call(&mut c, call).await;
            }
            let mut tx = self.begin_write().await?;
            let out = feed::FeedSql::<DB>::call(&mut tx, call).await?;
            tx.commit().await?;
            Ok(out)
        }

        async fn soonest_hold_expiry(&self) -> Result<Option<Micros>, StoreError> {
            Ok(sqlx::query_scalar::<DB, Option<i64>>(
                "SELECT MIN(expires_at) FROM holds WHERE state = 'held'",
            )
            .fetch_one(&self.read)
            .await?)
        }

        async fn expire_holds(&self, now: Micros) -> Result<u64, StoreError> {
            let mut tx = self.begin_write().await?;
            if DB::SHARED {
                // Their members locked first, as batches lock them.
                let members: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT member_id FROM holds WHERE state = 'held' AND expires_at <= $1 \
                     ORDER BY member_id",
                )
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
                if members.is_empty() {
                    return Ok(0);
                }
                DB::lock_members(&mut tx, &members).await?;
            }
            let n = release_expired_holds::<DB>(&mut tx, now, now).await?;
            tx.commit().await?;
            metrics::counter!("coalition_holds_total", "event" => "expired").increment(n);
            Ok(n)
        }

        async fn add_price(
            &self,
            v: &crate::prices::PriceVersion,
        ) -> Result<crate::prices::PriceVersion, StoreError> {
            let mut tx = self.begin_write().await?;
            let stored = registry::RegistrySql::<DB>::add_price(&mut tx, v).await?;
            tx.commit().await?;
            Ok(stored)
        }
    }
}

/// The batch writer's backend: one connection (a pool of one, so that a connection lost is
/// opened again), each batch one transaction.
pub struct SqlBackend<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlBackend<DB> {
    /// The backend writing through `pool` (of one connection).
    pub fn new(pool: Pool<DB>) -> Self {
        SqlBackend { pool }
    }
}

/// Why one attempt at a batch failed: a database error (whose kind decides a retry), or a
/// failure of the shared logic itself (a row that does not decode, say).
enum AttemptError {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for AttemptError {
    fn from(e: sqlx::Error) -> Self {
        AttemptError::Sql(e)
    }
}

sql_impl! {
    impl SqlBackend<DB> {
        async fn attempt(
            &self,
            requests: &[Request],
            ctx: &batch::Context,
        ) -> Result<Applied, AttemptError> {
            // The guard rolls back when dropped (an error, a panic): nothing half-done is
            // committed. SQLite takes the file's write lock at once (`BEGIN IMMEDIATE`).
            let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
            let out = {
                let mut ledger = SqlTx::<DB> {
                    conn: &mut tx,
                    error: None,
                    told: ctx.tell.then(Vec::new),
                    expired_holds: 0,
                };
                match batch::apply(&mut ledger, requests, ctx).await {
                    Ok(answers) => (
                        Applied {
                            answers,
                            told: ledger.told.take().unwrap_or_default(),
                        },
                        ledger.expired_holds,
                    ),
                    Err(e) => {
                        return Err(match ledger.error.take() {
                            Some(sql) => AttemptError::Sql(sql),
                            None => AttemptError::Store(e),
                        });
                    }
                }
            };
            if let Some(pause) = ctx.pause_before_commit {
                tokio::time::sleep(pause).await;
            }
            let decided = std::time::Instant::now();
            tx.commit().await?;
            tracing::trace!(commit_micros = decided.elapsed().as_micros() as u64, "commit");
            let (applied, expired_holds) = out;
            if expired_holds > 0 {
                metrics::counter!("coalition_holds_total", "event" => "expired")
                    .increment(expired_holds);
            }
            Ok(applied)
        }
    }
}

sql_impl! {
    #[async_trait]
    impl BatchBackend for SqlBackend<DB> {
        async fn apply_batch(
            &mut self,
            requests: &[Request],
            ctx: &batch::Context,
        ) -> Result<Applied, StoreError> {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.attempt(requests, ctx).await {
                    Ok(out) => return Ok(out),
                    Err(AttemptError::Sql(e)) if DB::lost_race(&e) && attempt < MAX_ATTEMPTS => {
                        tracing::debug!(error = %e, attempt, "batch lost a race, running it again");
                        tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                    }
                    Err(AttemptError::Sql(e)) => return Err(e.into()),
                    Err(AttemptError::Store(e)) => return Err(e),
                }
            }
        }
    }
}

/// One batch's transaction. The shared logic sees `StoreError`; the sqlx error of a failed
/// statement is kept, so that the retry decision can read what it was.
pub struct SqlTx<'c, DB: sqlx::Database> {
    conn: &'c mut DB::Connection,
    error: Option<sqlx::Error>,
    /// The batch's events as the feed reads them, when the writer hands them to followers.
    told: Option<Vec<crate::events::Event>>,
    /// Holds the batch gave back (counted once it commits).
    expired_holds: u64,
}

impl<DB: sqlx::Database> SqlTx<'_, DB> {
    /// Keeps `e` for the retry decision, and says it as the shared logic hears it.
    fn fail(&mut self, e: sqlx::Error) -> StoreError {
        let s = StoreError::from(&e);
        self.error = Some(e);
        s
    }
}

sql_impl! {
    #[async_trait]
    impl LedgerTx for SqlTx<'_, DB> {
        async fn open_cycle(
            &mut self,
            now_cycle: chrono::NaiveDate,
        ) -> Result<chrono::NaiveDate, StoreError> {
            // Shared on PostgreSQL: batches do not wait for each other, a clearing run (which
            // takes the row exclusively) waits for them.
            let sql = format!(
                "SELECT sealed_through FROM clearing_state WHERE id = 1{}",
                DB::FOR_SHARE
            );
            let r = sqlx::query_scalar::<DB, Option<String>>(&sql)
                .fetch_one(&mut *self.conn)
                .await;
            let sealed = r.map_err(|e| self.fail(e))?;
            first_open_cycle(now_cycle, sealed.as_deref())
        }

        async fn lock_members(&mut self, members: &[String]) -> Result<(), StoreError> {
            let r = DB::lock_members(self.conn, members).await;
            r.map_err(|e| self.fail(e))
        }

        async fn find_transactions(
            &mut self,
            keys: &[(String, String)],
        ) -> Result<Vec<TxnRecord>, StoreError> {
            let mut out = Vec::new();
            for chunk in keys.chunks(MAX_BINDS / 2) {
                // One unique-index probe per key, never a scan.
                let sql = format!(
                    "SELECT t.* FROM (VALUES {}) AS k {} transactions t \
                     ON t.partner_id = k.column1 AND t.partner_txn_id = k.column2",
                    value_rows::<DB>(chunk.len(), 2),
                    DB::PINNED_JOIN
                );
                let mut q = sqlx::query::<DB>(&sql);
                for (p, t) in chunk {
                    q = q.bind(p.clone()).bind(t.clone());
                }
                let r = q.fetch_all(&mut *self.conn).await;
                for row in r.map_err(|e| self.fail(e))? {
                    out.push(rows::Rows::<DB>::txn(&row)?);
                }
            }
            Ok(out)
        }

        async fn load_members(
            &mut self,
            members: &[(String, i64)],
            now: Micros,
        ) -> Result<Vec<MemberLedger>, StoreError> {
            let r = lots::LotsSql::<DB>::load_members(&mut *self.conn, members, now).await;
            r.map_err(|e| self.fail(e))
        }

        async fn load_lots(&mut self, ids: &[i64]) -> Result<Vec<Lot>, StoreError> {
            let mut out = Vec::new();
            for chunk in ids.chunks(MAX_BINDS) {
                let sql = format!(
                    "SELECT * FROM lots WHERE id IN ({})",
                    in_list::<DB>(chunk.len())
                );
                let mut q = sqlx::query::<DB>(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                let r = q.fetch_all(&mut *self.conn).await;
                for row in r.map_err(|e| self.fail(e))? {
                    out.push(rows::Rows::<DB>::lot(&row)?);
                }
            }
            Ok(out)
        }

        async fn load_burn_slices(
            &mut self,
            burn_txns: &[i64],
        ) -> Result<Vec<Reversible>, StoreError> {
            let mut out = Vec::new();
            for chunk in burn_txns.chunks(MAX_BINDS) {
                let sql = format!(
                    "SELECT a.*, CAST(a.points + COALESCE((SELECT SUM(r.points) FROM allocations r \
                     WHERE r.reverses_txn = a.txn_id AND r.reverses_seq = a.seq), 0) AS BIGINT) \
                     AS remaining FROM allocations a WHERE a.reverses_txn IS NULL AND a.txn_id IN ({}) \
                     ORDER BY a.txn_id, a.seq",
                    in_list::<DB>(chunk.len())
                );
                let mut q = sqlx::query::<DB>(&sql);
                for id in chunk {
                    q = q.bind(*id);
                }
                let r = q.fetch_all(&mut *self.conn).await;
                for row in r.map_err(|e| self.fail(e))? {
                    out.push(Reversible {
                        allocation: rows::Rows::<DB>::allocation(&row)?,
                        remaining: row.try_get("remaining")?,
                    });
                }
            }
            Ok(out)
        }

        async fn live_campaigns(
            &mut self,
            now: Micros,
        ) -> Result<Vec<crate::programme::Campaign>, StoreError> {
            programme::ProgrammeSql::<DB>::live_campaigns(&mut *self.conn, now).await
        }

        async fn load_programme(
            &mut self,
            members: &[String],
        ) -> Result<std::collections::HashMap<String, Option<String>>, StoreError> {
            programme::ProgrammeSql::<DB>::load(&mut *self.conn, members).await
        }

        async fn earned_before(
            &mut self,
            pairs: &[(String, String)],
        ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
            programme::ProgrammeSql::<DB>::earned_before(&mut *self.conn, pairs).await
        }

        async fn find_holds(
            &mut self,
            keys: &[(String, String)],
        ) -> Result<Vec<holds::HoldRecord>, StoreError> {
            holds::HoldsSql::<DB>::find(&mut *self.conn, keys).await
        }

        async fn holds_of(
            &mut self,
            keys: &[(String, String)],
            members: &[String],
        ) -> Result<Vec<holds::HoldRecord>, StoreError> {
            holds::HoldsSql::<DB>::named_or_open(&mut *self.conn, keys, members).await
        }

        async fn reserve_txn_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
            let r = DB::reserve_txn_ids(self.conn, n).await;
            r.map_err(|e| self.fail(e))
        }

        async fn forgotten(
            &mut self,
            pseudonyms: &[String],
        ) -> Result<std::collections::HashSet<String>, StoreError> {
            retention::forgotten::<DB>(&mut *self.conn, pseudonyms).await
        }

        async fn marketing_consents(
            &mut self,
            pairs: &[(String, String)],
        ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
            let mut out = std::collections::HashSet::new();
            for chunk in pairs.chunks(MAX_BINDS / 2) {
                let sql = format!(
                    "SELECT c.member_id, c.scope FROM (VALUES {}) AS k JOIN consents c \
                     ON c.member_id = k.column1 AND c.scope = k.column2 \
                     WHERE c.purpose = 'marketing' AND c.granted = TRUE",
                    value_rows::<DB>(chunk.len(), 2)
                );
                let mut q = sqlx::query_as::<DB, (String, String)>(&sql);
                for (m, p) in chunk {
                    q = q.bind(m.clone()).bind(p.clone());
                }
                let r = q.fetch_all(&mut *self.conn).await;
                out.extend(r.map_err(|e| self.fail(e))?);
            }
            Ok(out)
        }

        async fn write(&mut self, w: &Writes) -> Result<(), StoreError> {
            let r = write::<DB>(self.conn, w).await;
            r.map_err(|e| self.fail(e))?;
            // The events of the batch's facts, in its transaction: they exist if and only if the
            // facts commit. Their partners' heads, like the cycle's totals, are held to the commit.
            self.expired_holds += w
                .events
                .iter()
                .filter(|e| e.event_type == crate::events::EventType::HoldExpired)
                .count() as u64;
            let r = feed::FeedSql::<DB>::append_telling(self.conn, w.at, &w.events, self.told.as_mut())
                .await;
            r.map_err(|e| self.fail(e))?;
            if !w.programme.is_empty() {
                let r = programme::ProgrammeSql::<DB>::write(self.conn, &w.programme).await;
                r.map_err(|e| self.fail(e))?;
            }
            let r = holds::HoldsSql::<DB>::write(self.conn, &w.holds).await;
            r.map_err(|e| self.fail(e))?;
            let r = matrix::MatrixSql::<DB>::add(self.conn, w.cycle, &w.matrix).await;
            r.map_err(|e| self.fail(e))?;
            // Last, so that the head is held only until the commit: the daemons' batches append
            // one chain in commit order.
            let head = format!(
                "SELECT seq, hash FROM ledger_chain_head WHERE id = 1{}",
                DB::FOR_UPDATE
            );
            let r = chain::append::<DB>(self.conn, w, &head).await;
            r.map_err(|e| self.fail(e))?;
            Ok(())
        }
    }
}

/// Writes a batch's rows: one multi-row statement per table.
async fn write<DB>(conn: &mut DB::Connection, w: &Writes) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i32: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i32>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'s> &'s str: sqlx::ColumnIndex<DB::Row>,
{
    let cycle = w.cycle.to_string();
    lots::LotsSql::<DB>::write_members(&mut *conn, &w.members).await?;
    // A purchase is stored as the decimal it was validated as.
    let amounts: Vec<Option<rust_decimal::Decimal>> = w
        .new_txns
        .iter()
        .map(|t| t.purchase.as_ref().map(|(a, _)| a.parse()).transpose())
        .collect::<Result<_, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let batch_id = chain::batch_id(w);
    let txns: Vec<(&TxnRecord, Option<rust_decimal::Decimal>)> =
        w.new_txns.iter().zip(amounts).collect();
    insert::<DB, _, _>(
        conn,
        "INSERT INTO transactions (id, partner_id, partner_txn_id, kind, member_id, points, reversed_points, \
         original_id, original_txn_id, purchase_amount, purchase_currency, request_hash, balance_after, slices, \
         debt_created, debt_repaid, accepted_at, parts, parts_reversed, tier, cycle, batch_id)",
        "",
        22,
        &txns,
        |q, (t, amount)| {
            let r = &t.receipt;
            q.bind(t.id)
                .bind(t.partner.clone())
                .bind(t.partner_txn_id.clone())
                .bind(t.kind.as_str().to_string())
                .bind(t.member.clone())
                .bind(t.points)
                .bind(t.reversed_points)
                .bind(t.original_id)
                .bind(r.original_transaction_id.clone())
                .bind(DB::maybe_decimal_param(*amount))
                .bind(t.purchase.as_ref().map(|(_, c)| c.clone()))
                .bind(t.request_hash.clone())
                .bind(r.balance_after)
                .bind(super::model::encode_slices(&r.slices))
                .bind(r.debt_created)
                .bind(r.debt_repaid)
                .bind(t.accepted_at)
                .bind(crate::ledger::parts::encode(&r.parts))
                .bind(super::model::encode_parts_reversed(t))
                .bind(r.tier.clone())
                .bind(cycle.clone())
                .bind(batch_id)
        },
    )
    .await?;
    for chunk in w.reversed.chunks(MAX_BINDS / 3) {
        // (id, reversed points, per part): one statement for all the batch's reversed originals.
        let sql = format!(
            "UPDATE transactions SET reversed_points = v.column2, parts_reversed = v.column3 \
             FROM (VALUES {}) AS v WHERE transactions.id = v.column1",
            value_rows::<DB>(chunk.len(), 3)
        );
        let mut q = sqlx::query::<DB>(&sql);
        for (id, reversed, parts) in chunk {
            q = q.bind(*id).bind(*reversed).bind(parts.clone());
        }
        q.execute(&mut *conn).await?;
    }
    insert::<DB, _, _>(
        conn,
        "INSERT INTO lots (id, member_id, issuer, points, points_left, reversed, expired, earned_at, expires_at)",
        " ON CONFLICT (id) DO UPDATE SET points_left = excluded.points_left, reversed = excluded.reversed, \
         expired = excluded.expired",
        9,
        &w.lots,
        |q, l| {
            q.bind(l.id)
                .bind(l.member.clone())
                .bind(l.issuer.clone())
                .bind(l.points)
                .bind(l.points_left)
                .bind(l.reversed)
                .bind(l.expired)
                .bind(l.earned_at)
                .bind(l.expires_at)
        },
    )
    .await?;
    insert::<DB, _, _>(
        conn,
        "INSERT INTO issuance (txn_id, cycle, issuer, fee_rate, points)",
        "",
        5,
        &w.issuance,
        |q, i| {
            q.bind(i.txn)
                .bind(cycle.clone())
                .bind(i.issuer.clone())
                .bind(i.fee_rate.normalize().to_string())
                .bind(i.points)
        },
    )
    .await?;
    insert::<DB, _, _>(
        conn,
        "INSERT INTO breakage (lot_id, member_id, issuer, cycle, points, txn_id)",
        "",
        6,
        &w.breakage,
        |q, f| {
            q.bind(f.lot)
                .bind(f.member.clone())
                .bind(f.issuer.clone())
                .bind(cycle.clone())
                .bind(f.points)
                .bind(f.txn)
        },
    )
    .await?;
    insert::<DB, _, _>(
        conn,
        "INSERT INTO allocations (txn_id, seq, lot_id, member_id, issuer, redeemer, points, rate, \
         reverses_txn, reverses_seq, accepted_at, cycle)",
        "",
        12,
        &w.allocations,
        |q, a| {
            q.bind(a.txn)
                .bind(a.seq)
                .bind(a.lot)
                .bind(a.member.clone())
                .bind(a.issuer.clone())
                .bind(a.redeemer.clone())
                .bind(a.points)
                .bind(DB::decimal_param(a.rate))
                .bind(a.reverses.map(|r| r.0))
                .bind(a.reverses.map(|r| r.1))
                .bind(a.accepted_at)
                .bind(cycle.clone())
        },
    )
    .await?;
    insert::<DB, _, _>(
        conn,
        "INSERT INTO debts (txn_id, member_id, owed_to, points, points_left, rate, created_at)",
        " ON CONFLICT (txn_id) DO UPDATE SET points_left = excluded.points_left",
        7,
        &w.debts,
        |q, d| {
            q.bind(d.txn)
                .bind(d.member.clone())
                .bind(d.owed_to.clone())
                .bind(d.points)
                .bind(d.points_left)
                .bind(DB::decimal_param(d.rate))
                .bind(d.created_at)
        },
    )
    .await?;
    // Last of the batch's own rows, and in key order: these rows are every lane's and every
    // daemon's, locked until the commit, so they are held as briefly as can be and always taken
    // in the same order (no two batches wait for each other in a circle).
    let mut totals = w.cycle_totals.clone();
    totals.sort();
    insert::<DB, _, _>(
        conn,
        "INSERT INTO cycle_totals (cycle, partner_id, kind, transactions, points)",
        " ON CONFLICT (cycle, partner_id, kind) DO UPDATE SET transactions = cycle_totals.transactions + \
         excluded.transactions, points = cycle_totals.points + excluded.points",
        5,
        &totals,
        |q, (p, k, n, pts)| {
            q.bind(cycle.clone())
                .bind(p.clone())
                .bind(k.to_string())
                .bind(*n)
                .bind(*pts)
        },
    )
    .await?;
    Ok(())
}

/// A clearing run's transaction (on SQLite the store's write connection, whose write lock
/// serialises it with the batch writer; on PostgreSQL a pooled one, with the clearing state's
/// row and an advisory lock).
pub struct SqlClearing<'c, DB: sqlx::Database> {
    conn: &'c mut DB::Connection,
    /// The run's instant (what its events are told at).
    at: Micros,
    /// Holds the run gave back (counted once it commits).
    expired_holds: u64,
}

sql_impl! {
    #[async_trait]
    impl clearing::ClearingTx for SqlClearing<'_, DB> {
        async fn lock_state(&mut self) -> Result<Option<chrono::NaiveDate>, StoreError> {
            // Exclusive: waits for batches in flight (they hold it shared), holds off new ones.
            let sql = format!(
                "SELECT sealed_through FROM clearing_state WHERE id = 1{}",
                DB::FOR_UPDATE
            );
            let s: Option<String> = sqlx::query_scalar(&sql).fetch_one(&mut *self.conn).await?;
            super::model::parse_date("clearing_state.sealed_through", s.as_deref())
        }

        async fn try_exclusive(&mut self) -> Result<bool, StoreError> {
            Ok(DB::try_clearing_lock(self.conn).await?)
        }

        async fn settlement(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<Option<clearing::Stored>, StoreError> {
            clearing::SharedSql::<DB>::settlement(self.conn, cycle).await
        }

        async fn latest_before(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<Option<clearing::Stored>, StoreError> {
            clearing::SharedSql::<DB>::latest_before(self.conn, cycle).await
        }

        async fn first_activity(
            &mut self,
            after: Option<chrono::NaiveDate>,
            before: chrono::NaiveDate,
        ) -> Result<Option<chrono::NaiveDate>, StoreError> {
            clearing::SharedSql::<DB>::first_activity(self.conn, after, before).await
        }

        async fn sweep(
            &mut self,
            before: Micros,
            cycle: chrono::NaiveDate,
        ) -> Result<i64, StoreError> {
            if DB::SHARED {
                // Lock the members concerned, in order, as batches do: no batch of another
                // daemon holds one of their lots half-way through a decision while the sweep
                // empties it. (One writer per file holds the write lock already.)
                let members: Vec<String> = sqlx::query_scalar(clearing::sql::EXPIRING_MEMBERS)
                    .bind(before)
                    .fetch_all(&mut *self.conn)
                    .await?;
                if members.is_empty() {
                    return Ok(0);
                }
                DB::lock_members(self.conn, &members).await?;
            }
            // Holds that ran out give their points back first (and each its event), so that
            // what expired while held is swept like any expired point.
            self.expired_holds += release_expired_holds::<DB>(self.conn, before, self.at).await?;
            clearing::SharedSql::<DB>::sweep(self.conn, before, cycle).await
        }

        async fn chain_head(&mut self) -> Result<String, StoreError> {
            chain::head::<DB>(&mut *self.conn).await
        }

        async fn first_after(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<Option<chrono::NaiveDate>, StoreError> {
            clearing::SharedSql::<DB>::first_after(self.conn, cycle).await
        }

        async fn first_transaction_cycle(
            &mut self,
        ) -> Result<Option<chrono::NaiveDate>, StoreError> {
            Ok(clearing::SharedSql::<DB>::frontier(self.conn)
                .await?
                .first_transaction)
        }

        async fn slices(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<Vec<coalition_clearing::Slice>, StoreError> {
            matrix::MatrixSql::<DB>::slices(&mut *self.conn, cycle).await
        }

        async fn issuance(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<Vec<coalition_clearing::Issuance>, StoreError> {
            registry::RegistrySql::<DB>::cycle_issuance(self.conn, cycle).await
        }

        async fn counts(
            &mut self,
            cycle: chrono::NaiveDate,
        ) -> Result<coalition_clearing::Counts, StoreError> {
            clearing::SharedSql::<DB>::counts(self.conn, cycle).await
        }

        async fn save(&mut self, s: &clearing::Stored) -> Result<(), StoreError> {
            clearing::SharedSql::<DB>::save(self.conn, s).await
        }

        async fn seal(&mut self, cycle: chrono::NaiveDate) -> Result<(), StoreError> {
            clearing::SharedSql::<DB>::seal(self.conn, cycle).await
        }
    }
}

/// A settlement's event for each partner in it (not the operator), with its net position.
fn settlement_events(s: &clearing::Stored, kind: EventType, reason: &str) -> Vec<NewEvent> {
    s.settlement
        .positions
        .iter()
        .filter(|p| p.participant != coalition_clearing::OPERATOR)
        .map(|p| NewEvent {
            partner: p.participant.clone(),
            event_type: kind,
            member: None,
            payload: Payload::Settlement {
                cycle: s.settlement.cycle.to_string(),
                digest: s.settlement.digest.clone(),
                net: p.net.to_string(),
                reason: reason.to_string(),
            },
        })
        .collect()
}

/// What tells one break from another across submissions (its number may change).
fn break_key(
    b: &coalition_clearing::reconcile::WorkedBreak,
) -> (String, String, String, Option<u64>) {
    (
        b.kind.clone(),
        b.transaction_id.clone(),
        b.fields.clone(),
        b.line,
    )
}

/// The keys of the open breaks of a partner's stored reports.
fn open_breaks(
    reply: reconciliation::ReconReply,
) -> std::collections::HashSet<(String, String, String, Option<u64>)> {
    match reply {
        reconciliation::ReconReply::Reports(reports) => reports
            .iter()
            .flat_map(|r| r.breaks.iter())
            .filter(|b| b.resolved_at.is_empty())
            .map(break_key)
            .collect(),
        _ => Default::default(),
    }
}

/// A break's event.
fn break_event(
    kind: EventType,
    cycle: &str,
    b: &coalition_clearing::reconcile::WorkedBreak,
) -> NewEvent {
    NewEvent {
        partner: b.partner.clone(),
        event_type: kind,
        member: None,
        payload: Payload::Break {
            cycle: cycle.to_string(),
            break_id: b.id,
            kind: b.kind.clone(),
            transaction_id: b.transaction_id.clone(),
            note: b.note.clone(),
        },
    }
}

/// A stored business date of a request already checked.
fn parse_cycle(cycle: &str) -> Result<chrono::NaiveDate, StoreError> {
    coalition_clearing::parse_business_date(cycle)
        .ok_or_else(|| StoreError::Corrupt(format!("{cycle:?} is not a business date")))
}

/// Gives back the points of every hold that ran out by `before` (their members locked by the
/// caller where daemons share the database), each with its `hold.expired` event told at `at`.
/// Returns how many.
async fn release_expired_holds<DB>(
    conn: &mut DB::Connection,
    before: Micros,
    at: Micros,
) -> Result<u64, StoreError>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    DB::QueryResult: registry::RowsAffected,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(
        "SELECT id, partner_id, partner_txn_id, member_id, points, authorized_at, expires_at \
         FROM holds WHERE state = 'held' AND expires_at <= $1 ORDER BY id",
    )
    .bind(before)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        let expires_at: i64 = r.try_get(6)?;
        events.push(NewEvent {
            partner: r.try_get(1)?,
            event_type: EventType::HoldExpired,
            member: Some(r.try_get(3)?),
            payload: Payload::Hold {
                hold: crate::ledger::HoldView {
                    authorization_id: r.try_get(2)?,
                    state: crate::ledger::HoldState::Expired,
                    points: r.try_get(4)?,
                    captured: 0,
                    authorized_at: r.try_get(5)?,
                    expires_at,
                    closed_by: None,
                },
                ledger_id: r.try_get(0)?,
                balance_after: None,
                receipt: None,
            },
        });
    }
    for statement in clearing::sql::RELEASE_HOLDS {
        sqlx::query(statement)
            .bind(before)
            .execute(&mut *conn)
            .await?;
    }
    feed::FeedSql::<DB>::append(conn, at, &events).await?;
    Ok(rows.len() as u64)
}
