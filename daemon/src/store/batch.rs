//! The shared batch logic: given a backend's [`LedgerTx`], load what a batch of requests needs in a
//! few bulk reads, decide each request in order with the pure ledger (so two requests on one member
//! in one batch see each other), and hand the backend one set of [`Writes`].

use super::error::StoreError;
use super::model::{Op, Rejection, Request, TxnRecord, Writes};
use crate::ledger::{
    self, Funder, Kind, MemberLedger, Micros, NewEarn, Part, PartKind, Receipt, Refusal, Reversible,
};
use crate::programme::{self, Campaign, Ladder, MemberProgramme};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet, VecDeque};

mod events;
mod holds;
use crate::events::EventType;
use holds::Holds;

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
    /// `now`: their open debts and enough of their open lots ([`super::lots::LotsSql::load_members`]).
    /// Unknown members are absent.
    async fn load_members(
        &mut self,
        members: &[(String, i64)],
        now: Micros,
    ) -> Result<Vec<MemberLedger>, StoreError>;
    /// Lots by id (a lot's id is its earn's id, negated for the operator-funded lot).
    async fn load_lots(&mut self, ids: &[i64]) -> Result<Vec<crate::ledger::Lot>, StoreError>;
    /// The allocations of these burns, in the order made, with what is left to reverse of each.
    async fn load_burn_slices(&mut self, burn_txns: &[i64]) -> Result<Vec<Reversible>, StoreError>;
    /// Campaigns in force at `now`.
    async fn live_campaigns(
        &mut self,
        now: Micros,
    ) -> Result<Vec<crate::programme::Campaign>, StoreError>;
    /// The stored programme text of these members (see [`super::programme::ProgrammeSql::load`]).
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
    /// [`super::holds::HoldsSql::find`]).
    async fn find_holds(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError>;
    /// The holds named by `keys` and those still held of `members`, with their slices (see
    /// [`super::holds::HoldsSql::named_or_open`]).
    async fn holds_of(
        &mut self,
        keys: &[(String, String)],
        members: &[String],
    ) -> Result<Vec<super::holds::HoldRecord>, StoreError>;
    /// `n` fresh transaction ids, increasing.
    async fn reserve_txn_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError>;
    /// Of these pseudonyms, those of forgotten members (read after the members are locked).
    async fn forgotten(
        &mut self,
        pseudonyms: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError>;
    /// Of these (member, partner) pairs, those whose marketing consent the partner holds.
    async fn marketing_consents(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, StoreError>;
    /// Writes the batch's changes.
    async fn write(&mut self, writes: &Writes) -> Result<(), StoreError>;
}

/// What a batch needs to know besides the requests.
#[derive(Debug, Clone)]
pub struct Context {
    /// Price versions: every burn is priced, every earn charged its fee, by the version in force
    /// at `now`.
    pub prices: std::sync::Arc<crate::prices::PriceBook>,
    /// Retired partners and the instant from which they no longer earn, burn or reverse.
    pub retired: std::sync::Arc<std::collections::BTreeMap<String, Micros>>,
    /// Retired partners whose points the operator took over as issuer, and from when.
    pub taken_over: std::sync::Arc<std::collections::BTreeMap<String, Micros>>,
    /// The acceptance instant of every transaction in the batch.
    pub now: Micros,
    /// Lifetime of new lots; `None`: never expire.
    pub expire_after: Option<Micros>,
    /// Test hook: wait this long between writing and committing (to cut a connection mid-batch).
    pub pause_before_commit: Option<std::time::Duration>,
    /// The cycle calendar.
    pub cycles: coalition_clearing::Cycles,
    /// Test hook: panic inside the open transaction when a request names this member (to prove
    /// that a panic on the write path leaves no transaction open and the writer serving).
    pub panic_on_member: Option<&'static str>,
    /// The tier ladder, when the coalition runs tiers.
    pub ladder: Option<std::sync::Arc<Ladder>>,
    /// Each partner's kind (campaign scopes).
    pub partner_kinds: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// The partners' stamp card rules.
    pub stamp_rules: std::sync::Arc<std::collections::BTreeMap<String, programme::StampRule>>,
    /// The members' key: a request naming a member whose pseudonym is forgotten is refused.
    pub member_key: Option<crate::privacy::MemberKey>,
    /// Append each batch's link to the ledger's hash chain (always, but in the bench measuring it).
    pub chain: bool,
    /// Keep the batch's events, numbered, for the feed's followers (someone follows the tail).
    pub tell: bool,
}

/// The programme as one batch sees it: the campaigns in force at its instant and the state of the
/// members it earns for, updated request by request.
#[derive(Debug, Default)]
struct Programme {
    /// Whether any rule can apply (tiers run or a campaign is in force).
    on: bool,
    campaigns: Vec<Campaign>,
    /// The state of the members it earns or reverses earns for, as the batch changes it.
    members: HashMap<String, MemberProgramme>,
    /// Their state as stored when the batch began (only what differs is written).
    stored: HashMap<String, Option<String>>,
}

type Key = (String, String);

fn key(partner: &str, id: &str) -> Key {
    (partner.to_string(), id.to_string())
}

/// Applies a batch through `tx`. Rejections are per request; an `Err` means the backend failed and
/// the caller must roll the whole batch back.
pub async fn apply(
    tx: &mut dyn LedgerTx,
    requests: &[Request],
    ctx: &Context,
) -> Result<Vec<Result<Receipt, Rejection>>, StoreError> {
    let t0 = std::time::Instant::now();
    // 1. The members the batch touches. A reversal's member is its original's: look those up.
    let mut members: Vec<String> = Vec::new();
    let mut original_keys: Vec<Key> = Vec::new();
    // A capture's or void's member is its hold's.
    let mut hold_keys: Vec<Key> = Vec::new();
    for r in requests {
        match &r.op {
            Op::Earn { member, .. } | Op::Burn { member, .. } => members.push(member.clone()),
            Op::ReverseEarn { original, .. } | Op::ReverseBurn { original, .. } => {
                original_keys.push(key(&r.partner, original))
            }
            Op::Authorize { member, .. } => members.push(member.clone()),
            Op::Capture { authorization, .. } | Op::Void { authorization } => {
                hold_keys.push(key(&r.partner, authorization))
            }
        }
    }
    if !hold_keys.is_empty() {
        members.extend(
            tx.find_holds(&hold_keys)
                .await?
                .into_iter()
                .map(|h| h.member),
        );
    }
    if !original_keys.is_empty() {
        members.extend(
            tx.find_transactions(&original_keys)
                .await?
                .into_iter()
                .map(|t| t.member),
        );
    }
    members.sort();
    members.dedup();

    // 2. The cycle, decided inside this transaction: the cycle of `now`, or the first one not yet
    //    sealed by a clearing run. Then lock the members, then read everything else: what is read
    //    after the lock is current.
    let now_cycle = ctx
        .cycles
        .cycle_of(ctx.now)
        .map_err(|e| StoreError::Unavailable(format!("the clock is outside the calendar: {e}")))?;
    let cycle = tx.open_cycle(now_cycle).await?;
    tx.lock_members(&members).await?;
    if let Some(m) = ctx.panic_on_member
        && members.iter().any(|x| x == m)
    {
        panic!("test hook: panic inside the batch transaction for member {m}");
    }
    // Members named by a request that were forgotten, read after the lock: a forget holds every
    // batch out until it commits, so none can write the old id after it.
    let forgotten: HashSet<String> = match &ctx.member_key {
        Some(k) => {
            let named: HashMap<String, &str> = requests
                .iter()
                .filter_map(|r| match &r.op {
                    Op::Earn { member, .. }
                    | Op::Burn { member, .. }
                    | Op::Authorize { member, .. } => Some((k.pseudonym(member), member.as_str())),
                    _ => None,
                })
                .collect();
            let pseudonyms: Vec<String> = named.keys().cloned().collect();
            tx.forgotten(&pseudonyms)
                .await?
                .iter()
                .filter_map(|p| named.get(p).map(|m| m.to_string()))
                .collect()
        }
        None => HashSet::new(),
    };
    let mut keys: Vec<Key> = requests
        .iter()
        .map(|r| key(&r.partner, &r.transaction_id))
        .collect();
    // Holds a request names by its own id (a retry, or an id a hold or its capture or void already
    // used: index probes per request, so that no id serves two calls) or by its authorization,
    // and every hold still held of the batch's members: one statement.
    let mut holds = Holds::default();
    let mut named = keys.clone();
    named.extend(hold_keys);
    named.sort();
    named.dedup();
    holds.add(tx.holds_of(&named, &members).await?);
    keys.extend(original_keys);
    keys.sort();
    keys.dedup();
    let mut txns: HashMap<Key, TxnRecord> = tx
        .find_transactions(&keys)
        .await?
        .into_iter()
        .map(|t| (key(&t.partner, &t.partner_txn_id), t))
        .collect();
    let (mut earn_originals, mut burn_originals) = (Vec::new(), Vec::new());
    for r in requests {
        if let Op::ReverseEarn { original, .. } | Op::ReverseBurn { original, .. } = &r.op {
            match txns.get(&key(&r.partner, original)).map(|o| o.kind) {
                Some(Kind::Earn) => earn_originals.push(txns[&key(&r.partner, original)].id),
                Some(Kind::Burn) => burn_originals.push(txns[&key(&r.partner, original)].id),
                _ => {}
            }
        }
    }
    let t_find = t0.elapsed();
    // What the batch may take from each member's lots at most (burns, authorizations, and earn
    // reversals up to their earn's points): the members' first lots in spending order are read,
    // and all of them only when those cannot cover it.
    let mut demand: HashMap<&str, i64> = members.iter().map(|m| (m.as_str(), 0)).collect();
    for r in requests {
        let (member, points) = match &r.op {
            Op::Burn { member, points } | Op::Authorize { member, points, .. } => {
                (member.as_str(), *points)
            }
            Op::ReverseEarn { original, .. } => match txns.get(&key(&r.partner, original)) {
                Some(o) => (o.member.as_str(), o.points),
                None => continue,
            },
            _ => continue,
        };
        if let Some(d) = demand.get_mut(member) {
            *d = d.saturating_add(points);
        }
    }
    let demand: Vec<(String, i64)> = members
        .iter()
        .map(|m| (m.clone(), demand.get(m.as_str()).copied().unwrap_or(0)))
        .collect();
    let mut ledgers: HashMap<String, MemberLedger> = tx
        .load_members(&demand, ctx.now)
        .await?
        .into_iter()
        .map(|m| (m.member.clone(), m))
        .collect();
    let mut extra_lots = Vec::new();
    // The lots of every hold still held of the batch's members (read with the named ones above):
    // those that ran out are released before anything is decided, so their points count again.
    let held_lots = holds.held_lots();
    if !held_lots.is_empty() {
        extra_lots.extend(tx.load_lots(&held_lots).await?);
    }
    if !earn_originals.is_empty() {
        // A lot's id is its earn's, negated for the operator-funded lot.
        let lot_ids: Vec<i64> = earn_originals.iter().flat_map(|&e| [e, -e]).collect();
        extra_lots.extend(tx.load_lots(&lot_ids).await?);
    }
    let mut slices: HashMap<i64, Vec<Reversible>> = HashMap::new();
    if !burn_originals.is_empty() {
        let loaded = tx.load_burn_slices(&burn_originals).await?;
        let lot_ids: Vec<i64> = loaded.iter().map(|s| s.allocation.lot).collect();
        extra_lots.extend(tx.load_lots(&lot_ids).await?);
        for s in loaded {
            slices.entry(s.allocation.txn).or_default().push(s);
        }
    }
    for lot in extra_lots {
        if let Some(m) = ledgers.get_mut(&lot.member) {
            m.add_lot(lot);
        }
    }
    // Points left in each member's open lots as stored (kept in `members.open_points`), before
    // anything changes them (the release of holds that ran out, just below, included).
    let open_before: HashMap<String, i64> = ledgers
        .iter()
        .map(|(k, m)| (k.clone(), m.open_points()))
        .collect();
    // From a takeover on, the operator owes for a retired issuer's points: its lots allocate in
    // the operator's name (the lot rows keep their issuer of record; the upsert never changes it).
    if !ctx.taken_over.is_empty() {
        for lot in ledgers.values_mut().flat_map(|m| m.lots.iter_mut()) {
            if ctx
                .taken_over
                .get(&lot.issuer)
                .is_some_and(|&t| ctx.now >= t)
            {
                lot.issuer = coalition_clearing::OPERATOR.to_string();
            }
        }
    }
    let released = holds.release_expired(&mut ledgers, ctx.now);
    let earners: Vec<(String, String)> = requests
        .iter()
        .filter_map(|r| match &r.op {
            Op::Earn { member, .. } => Some((member.clone(), r.partner.clone())),
            _ => None,
        })
        .collect();
    let mut prog = Programme::default();
    if !earners.is_empty() {
        prog.campaigns = tx.live_campaigns(ctx.now).await?;
        prog.on = ctx.ladder.is_some()
            || !prog.campaigns.is_empty()
            || earners.iter().any(|(_, p)| ctx.stamp_rules.contains_key(p));
    }
    // Members whose programme state the batch may change: earners while a rule can apply, and the
    // members of earn reversals (which take back qualifying points, grants and stamps).
    let mut who: Vec<String> = if prog.on {
        earners.iter().map(|(m, _)| m.clone()).collect()
    } else {
        Vec::new()
    };
    for r in requests {
        if let Op::ReverseEarn { original, .. } = &r.op
            && let Some(o) = txns.get(&key(&r.partner, original))
        {
            who.push(o.member.clone());
        }
    }
    who.sort();
    who.dedup();
    if !who.is_empty() {
        prog.stored = tx.load_programme(&who).await?;
        for m in who {
            let text = prog.stored.get(&m).cloned().flatten();
            let state =
                super::programme::state_of(text.as_deref(), ctx.ladder.as_deref(), ctx.now)?;
            prog.members.insert(m, state);
        }
    }
    if prog.on && prog.campaigns.iter().any(|c| c.welcome) {
        let mut pairs = earners.clone();
        pairs.sort();
        pairs.dedup();
        for (m, p) in tx.earned_before(&pairs).await? {
            if let Some(state) = prog.members.get_mut(&m) {
                state.earned_at.insert(p);
            }
        }
    }
    let t_load = t0.elapsed();
    let known_before: HashSet<String> = ledgers.keys().cloned().collect();
    let activity_before: HashMap<String, crate::ledger::Activity> = ledgers
        .iter()
        .map(|(k, m)| (k.clone(), m.activity))
        .collect();

    // 3. Decide each request in order.
    let mut ids: VecDeque<i64> = tx.reserve_txn_ids(requests.len()).await?.into();
    let mut writes = Writes {
        cycle,
        chain: ctx.chain,
        at: ctx.now,
        ..Writes::default()
    };
    for k in &released {
        if let Some(h) = holds.by_key.get(k) {
            writes
                .events
                .push(events::hold(EventType::HoldExpired, h, None));
        }
    }
    let mut reversed: HashMap<i64, (i64, Vec<i64>)> = HashMap::new();
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let k = key(&r.partner, &r.transaction_id);
        if let Some(existing) = txns.get(&k) {
            out.push(if existing.request_hash == r.hash {
                let mut receipt = existing.receipt.clone();
                // A capture's answer carries its hold.
                receipt.hold = holds
                    .closed_by
                    .get(&k)
                    .and_then(|ak| holds.by_key.get(ak))
                    .map(|h| h.view());
                Ok(receipt)
            } else {
                Err(Rejection::IdReused(r.transaction_id.clone()))
            });
            continue;
        }
        if let Some(answer) = holds.known(r, &ledgers, ctx.now) {
            out.push(answer);
            continue;
        }
        if let Op::Earn { member, .. } | Op::Burn { member, .. } | Op::Authorize { member, .. } =
            &r.op
            && forgotten.contains(member)
        {
            out.push(Err(Rejection::MemberForgotten));
            continue;
        }
        if ctx
            .retired
            .get(&r.partner)
            .is_some_and(|&since| ctx.now >= since)
            && matches!(r.op, Op::Authorize { .. } | Op::Void { .. })
        {
            out.push(Err(Rejection::Retired {
                partner: r.partner.clone(),
                since: crate::clock::rfc3339(ctx.retired[&r.partner]),
            }));
            continue;
        }
        let mut next_id = || ids.pop_front().expect("one id reserved per request");
        if let Some(answer) = holds.decide(r, &mut next_id, &mut ledgers, ctx.now) {
            if let Ok(receipt) = &answer
                && let Some(e) = events::of_hold_call(r, receipt)
            {
                writes.events.push(e);
            }
            out.push(answer);
            continue;
        }
        let decided = decide(
            &mut ids,
            r,
            ctx,
            &mut ledgers,
            &mut txns,
            &mut slices,
            &mut writes,
            &mut prog,
            &mut holds,
        );
        match decided {
            Ok(record) => {
                if let Some(orig) = record.original_id {
                    let o = txns
                        .values_mut()
                        .find(|t| t.id == orig)
                        .expect("original is loaded");
                    o.reversed_points += record.points;
                    // An earn reversal's parts are its earn's, each with what it took back.
                    for (done, p) in o.parts_reversed.iter_mut().zip(&record.receipt.parts) {
                        *done += p.points;
                    }
                    reversed.insert(orig, (o.reversed_points, o.parts_reversed.clone()));
                }
                out.push(Ok(record.receipt.clone()));
                writes.events.extend(events::of_transaction(
                    &record,
                    ctx,
                    &writes.programme.vouchers,
                ));
                writes.new_txns.push(record.clone());
                txns.insert(k, record);
            }
            Err(e) => out.push(Err(e)),
        }
    }

    // 4. Collect what changed. Reversal counters of transactions new in this batch are already
    //    in their records.
    for t in writes.new_txns.iter_mut() {
        if let Some((r, parts)) = reversed.remove(&t.id) {
            t.reversed_points = r;
            t.parts_reversed = parts;
        }
    }
    let mut totals: std::collections::BTreeMap<(String, &'static str), (i64, i64)> =
        Default::default();
    for t in &writes.new_txns {
        let e = totals
            .entry((t.partner.clone(), t.kind.as_str()))
            .or_default();
        e.0 += 1;
        // Points per request are capped far below i64::MAX / max_batch; checked all the same.
        e.1 = e.1.checked_add(t.points).ok_or_else(|| {
            StoreError::Refused(format!(
                "points of {} overflow the batch's totals",
                t.partner
            ))
        })?;
    }
    writes.cycle_totals = totals
        .into_iter()
        .map(|((p, k), (n, pts))| (p, k, n, pts))
        .collect();
    writes.matrix = super::matrix::cells_of(&writes.allocations)?;
    let mut changed: Vec<(i64, (i64, Vec<i64>))> = reversed.into_iter().collect();
    changed.sort();
    for (id, (points, parts)) in changed {
        let stored = txns.values().find(|t| t.id == id).and_then(|t| {
            let mut t = t.clone();
            t.parts_reversed = parts;
            super::model::encode_parts_reversed(&t)
        });
        writes.reversed.push((id, points, stored));
    }
    for (member, m) in &prog.members {
        let before = prog.stored.get(member).cloned().flatten();
        let after =
            super::programme::encode_state(m, ctx.ladder.as_deref(), before.as_deref(), ctx.now)?;
        if after != before {
            writes.programme.states.insert(member.clone(), after);
        }
    }
    writes.programme.at = ctx.now;
    // Tier changes, told to each partner the member transacted with in this batch and whose
    // marketing consent it holds.
    let changes =
        events::tier_changes(&prog.stored, &writes.programme.states, ctx, requests, &txns);
    if !changes.is_empty() {
        let pairs: Vec<(String, String)> = changes
            .iter()
            .map(|e| (e.member.clone().unwrap_or_default(), e.partner.clone()))
            .collect();
        let consented = tx.marketing_consents(&pairs).await?;
        writes.events.extend(changes.into_iter().filter(|e| {
            consented.contains(&(e.member.clone().unwrap_or_default(), e.partner.clone()))
        }));
    }
    for k in &holds.dirty {
        if let Some(h) = holds.by_key.get(k) {
            writes.holds.holds.push(h.clone());
        }
    }
    // Each member's kept activity: the month of the batch's cycle, and its second transaction.
    let month = {
        use chrono::Datelike;
        i64::from(cycle.year()) * 12 + i64::from(cycle.month0())
    };
    for t in &writes.new_txns {
        if let Some(m) = ledgers.get_mut(&t.member) {
            m.activity.record(month, ctx.now);
        }
    }
    let mut touched: Vec<&MemberLedger> = ledgers.values().filter(|m| m.known).collect();
    touched.sort_by(|a, b| a.member.cmp(&b.member));
    for m in touched {
        writes
            .lots
            .extend(m.lots.iter().filter(|l| l.dirty).cloned());
        writes
            .debts
            .extend(m.debts.iter().filter(|d| d.dirty).cloned());
        let open = m.open_points();
        let row = |first_seen| super::model::MemberRow {
            member: m.member.clone(),
            first_seen,
            open_points: open,
            activity: m.activity,
        };
        if !known_before.contains(&m.member) {
            writes.members.push(row(ctx.now));
        } else if open_before.get(&m.member) != Some(&open)
            || activity_before.get(&m.member) != Some(&m.activity)
        {
            writes.members.push(row(0));
        }
    }
    let t_decide = t0.elapsed();
    if !writes.new_txns.is_empty() || !writes.holds.holds.is_empty() {
        tx.write(&writes).await?;
    }
    tracing::trace!(
        find = t_find.as_micros() as u64,
        load = t_load.as_micros() as u64,
        decide = t_decide.as_micros() as u64,
        write = t0.elapsed().as_micros() as u64,
        "batch phases"
    );
    Ok(out)
}

/// The prices in force for `partner` at `at`, or the request is refused (a partner the daemon
/// has no price for cannot move money).
/// A burn as decided: by a `Burn`, or by the capture of a hold.
struct Burned<'a> {
    id: i64,
    member: &'a str,
    points: i64,
    balance_after: i64,
    now: Micros,
    allocations: Vec<ledger::Allocation>,
    hold: Option<ledger::HoldView>,
}

/// The receipt and record of a burn; its allocations become reversible slices and writes.
fn burned(
    r: &Request,
    b: Burned<'_>,
    slices: &mut HashMap<i64, Vec<Reversible>>,
    writes: &mut Writes,
) -> TxnRecord {
    let receipt = Receipt {
        transaction_id: r.transaction_id.clone(),
        ledger_id: b.id,
        kind: Kind::Burn,
        member_id: b.member.to_string(),
        points: b.points,
        balance_after: b.balance_after,
        accepted_at: b.now,
        slices: ledger::by_issuer(&b.allocations),
        debt_created: 0,
        debt_repaid: 0,
        original_transaction_id: None,
        parts: vec![],
        tier: None,
        hold: b.hold,
    };
    slices.insert(
        b.id,
        b.allocations
            .iter()
            .map(|a| Reversible {
                allocation: a.clone(),
                remaining: a.points,
            })
            .collect(),
    );
    writes.allocations.extend(b.allocations);
    record(r, b.id, Kind::Burn, b.member, b.points, None, None, receipt)
}

fn prices(ctx: &Context, partner: &str, at: Micros) -> Result<crate::prices::Prices, Rejection> {
    ctx.prices
        .at(partner, at)
        .ok_or_else(|| Rejection::Unpriced(partner.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn decide(
    ids: &mut VecDeque<i64>,
    r: &Request,
    ctx: &Context,
    ledgers: &mut HashMap<String, MemberLedger>,
    txns: &mut HashMap<Key, TxnRecord>,
    slices: &mut HashMap<i64, Vec<Reversible>>,
    writes: &mut Writes,
    prog: &mut Programme,
    holds: &mut Holds,
) -> Result<TxnRecord, Rejection> {
    let now = ctx.now;
    // Judged at the acceptance instant, inside the transaction: a call that commits after the
    // retirement opens is refused, however early it reached the daemon.
    if let Some(&since) = ctx.retired.get(&r.partner)
        && now >= since
    {
        return Err(Rejection::Retired {
            partner: r.partner.clone(),
            since: crate::clock::rfc3339(since),
        });
    }
    match &r.op {
        Op::Earn {
            member,
            points: base,
            purchase,
            category,
        } => {
            let fee = prices(ctx, &r.partner, now)?.issuance_fee;
            let ladder = ctx.ladder.as_deref();
            let mut priced = if prog.on {
                let state = prog.members.entry(member.clone()).or_default();
                let tier = ladder.map(|l| {
                    l.tiers[state.tier_index().min(l.tiers.len() - 1)]
                        .name
                        .as_str()
                });
                let facts = programme::EarnFacts {
                    partner: &r.partner,
                    partner_kind: ctx.partner_kinds.get(&r.partner).map_or("", |k| k.as_str()),
                    base: *base,
                    amount: purchase.as_ref().map(|(a, _)| *a),
                    category: category.as_deref(),
                    tier,
                    earned_here_before: state.earned_at.contains(&r.partner),
                    stamps: ctx.stamp_rules.get(&r.partner),
                    now,
                };
                programme::price_earn(ladder, &prog.campaigns, state, &facts)
                    .map_err(|_| Refusal::Overflow(*base))?
            } else {
                programme::Priced {
                    parts: vec![Part::base(*base)],
                    stamp: None,
                }
            };
            let funded = ledger::parts::by_funder(&priced.parts);
            let share = |f: Funder| funded.iter().find(|(x, _)| *x == f).map_or(0, |(_, p)| *p);
            let (partner_points, operator_points) =
                (share(Funder::Partner), share(Funder::Operator));
            let points = partner_points + operator_points;
            let m = ledgers
                .entry(member.clone())
                .or_insert_with(|| MemberLedger::new_member(member));
            let id = ids.pop_front().expect("one id reserved per request");
            // A completed card with a voucher reward: the voucher, named on the stamp's part.
            if let Some(programme::StampRule {
                reward: programme::StampReward::Voucher { what, days },
                ..
            }) = ctx.stamp_rules.get(&r.partner)
                && priced.stamp.as_ref().is_some_and(|s| s.completed)
                && let Some(p) = priced.parts.iter_mut().find(|p| p.kind == PartKind::Stamp)
            {
                let v = programme::Voucher {
                    id: format!("v{id}"),
                    member: member.clone(),
                    partner: r.partner.clone(),
                    what: what.clone(),
                    issued_at: now,
                    expires_at: now + *days as i64 * programme::DAY,
                    earn: id,
                    redeemed_at: None,
                    redeemed_by: None,
                };
                p.source = format!("{} voucher {}", p.source, v.id);
                writes.programme.vouchers.push(v);
            }
            let effect = m.earn_funded(
                NewEarn {
                    txn: id,
                    issuer: &r.partner,
                    points: partner_points,
                    now,
                    expires_at: ctx.expire_after.map(|d| now + d),
                },
                operator_points,
            )?;
            let tier = if prog.on {
                let state = prog.members.entry(member.clone()).or_default();
                programme::record_earn(ladder, state, &r.partner, &priced, now)
            } else {
                None
            };
            let receipt = Receipt {
                transaction_id: r.transaction_id.clone(),
                ledger_id: id,
                kind: Kind::Earn,
                member_id: member.clone(),
                points,
                balance_after: m.balance(now),
                accepted_at: now,
                slices: vec![],
                debt_created: 0,
                debt_repaid: effect.debt_repaid,
                original_transaction_id: None,
                parts: priced.parts,
                tier,
                hold: None,
            };
            writes.allocations.extend(effect.repayments);
            if partner_points > 0 {
                writes.issuance.push(super::model::IssuanceRow {
                    txn: id,
                    issuer: r.partner.clone(),
                    fee_rate: fee,
                    points: partner_points,
                });
            }
            Ok(record(
                r,
                id,
                Kind::Earn,
                member,
                points,
                None,
                purchase.clone(),
                receipt,
            ))
        }
        Op::Burn { member, points } => {
            let rate = &prices(ctx, &r.partner, now)?.redemption_rate;
            // An unknown member is refused exactly like a member with nothing: no member oracle.
            let m = ledgers.get_mut(member).ok_or(Refusal::InsufficientPoints {
                balance: 0,
                requested: *points,
            })?;
            let id = ids.pop_front().expect("one id reserved per request");
            let allocations = m.burn(id, &r.partner, *rate, *points, now)?;
            let balance_after = m.balance(now);
            Ok(burned(
                r,
                Burned {
                    id,
                    member,
                    points: *points,
                    balance_after,
                    now,
                    allocations,
                    hold: None,
                },
                slices,
                writes,
            ))
        }
        Op::Capture {
            authorization,
            points,
        } => {
            let rate = prices(ctx, &r.partner, now)?.redemption_rate;
            let mut next_id = || ids.pop_front().expect("one id reserved per request");
            let holds::Captured {
                txn: id,
                member,
                points,
                allocations,
                view,
            } = holds.capture(r, authorization, *points, rate, &mut next_id, ledgers, now)?;
            let m = ledgers
                .get(&member)
                .ok_or_else(|| Rejection::UnknownTransaction(authorization.clone()))?;
            let balance_after = m.balance(now);
            Ok(burned(
                r,
                Burned {
                    id,
                    member: &member,
                    points,
                    balance_after,
                    now,
                    allocations,
                    hold: Some(view),
                },
                slices,
                writes,
            ))
        }
        Op::Authorize { .. } | Op::Void { .. } => {
            unreachable!("authorizations and voids are decided by the holds")
        }
        Op::ReverseEarn { original, points } => {
            let o = original_of(txns, r, original, Kind::Earn)?;
            let (orig_id, member, remaining, earned_at) = (
                o.id,
                o.member.clone(),
                o.points - o.reversed_points,
                o.accepted_at,
            );
            // An earn counted qualifying points if tiers ran when it was accepted.
            let o_counted = o.receipt.tier.is_some();
            let earn_parts = o.receipt.parts.clone();
            let left: Vec<i64> = earn_parts
                .iter()
                .zip(&o.parts_reversed)
                .map(|(p, done)| p.points - done)
                .collect();
            // A shortfall taken from other lots is redeemed here at today's rate; the fee refunded
            // is the one charged when the earn was accepted.
            let rate = &prices(ctx, &r.partner, now)?.redemption_rate;
            let fee = prices(ctx, &r.partner, o.accepted_at)?.issuance_fee;
            let points = whole_if_zero(*points, remaining, original)?;
            // Every part gives back its share, in proportion to what is left of it.
            let shares = ledger::parts::split(points, &left).ok_or(Refusal::BeyondRemaining {
                remaining,
                requested: points,
            })?;
            let taken: Vec<Part> = earn_parts
                .iter()
                .zip(&shares)
                .map(|(p, s)| Part {
                    points: *s,
                    ..p.clone()
                })
                .collect();
            let funded = ledger::parts::by_funder(&taken);
            let m = ledgers
                .get_mut(&member)
                .expect("member of a loaded original is loaded");
            let id = ids.pop_front().expect("one id reserved per request");
            let effect =
                m.reverse_earn_funded(id, orig_id, &r.partner, *rate, &funded, remaining, now)?;
            let mut slices_shown = vec![];
            for take in effect.own.iter().filter(|t| t.from_own > 0) {
                slices_shown.push((take.funder.issuer(&r.partner).to_string(), take.from_own));
            }
            slices_shown.extend(ledger::by_issuer(&effect.allocations));
            for take in effect.own.iter().filter(|t| t.unswept > 0) {
                if let Some(lot) = m.lots.iter().find(|l| l.id == take.lot) {
                    writes.breakage.push(super::model::BreakageFact {
                        lot: lot.id,
                        member: lot.member.clone(),
                        issuer: lot.issuer.clone(),
                        points: -take.unswept,
                        txn: Some(id),
                    });
                }
            }
            // Qualifying points (of an earn that counted them) and campaign grants go back on the
            // day and campaign they came from; a purchase reversed in full takes its stamp back
            // (below zero if it completed a card). The batch loaded the member's state.
            // (An earn of this same batch with the programme off has nothing to take back, and its
            // member's state was not loaded: the programme loads it for earns only when it runs.)
            let state = prog.members.get_mut(&member);
            debug_assert!(
                state.is_some()
                    || !(o_counted
                        || taken
                            .iter()
                            .any(|p| matches!(p.kind, PartKind::Campaign | PartKind::Stamp))),
                "the state of a reversal's member is loaded when it has something to take back"
            );
            if let Some(state) = state {
                if o_counted {
                    state.add_qualifying(earned_at, -points);
                }
                for p in taken.iter().filter(|p| p.kind == PartKind::Campaign) {
                    *state.granted.entry(p.source.clone()).or_default() -= p.points;
                }
                // The stamp goes back once: when the purchase, net of its returns, no longer
                // meets the card's minimum (or nothing of it is left).
                if earn_parts.iter().any(|p| p.kind == PartKind::Stamp) {
                    let min = ctx.stamp_rules.get(&r.partner).map(|s| s.min_amount);
                    let amount = o
                        .purchase
                        .as_ref()
                        .and_then(|(a, _)| rust_decimal::Decimal::from_str_exact(a).ok());
                    let total = o.points;
                    if programme::stamp_stands(min, amount, total, remaining)
                        && !programme::stamp_stands(min, amount, total, remaining - points)
                    {
                        state.cards.entry(r.partner.clone()).or_default().stamps -= 1;
                    }
                }
            }
            let partner_share = funded
                .iter()
                .find(|(f, _)| *f == Funder::Partner)
                .map_or(0, |(_, p)| *p);
            let receipt = Receipt {
                transaction_id: r.transaction_id.clone(),
                ledger_id: id,
                kind: Kind::ReverseEarn,
                member_id: member.clone(),
                points,
                balance_after: m.balance(now),
                accepted_at: now,
                slices: slices_shown,
                debt_created: effect.debt_created,
                debt_repaid: 0,
                original_transaction_id: Some(original.clone()),
                parts: taken,
                tier: None,
                hold: None,
            };
            writes.allocations.extend(effect.allocations);
            if partner_share > 0 {
                writes.issuance.push(super::model::IssuanceRow {
                    txn: id,
                    issuer: r.partner.clone(),
                    fee_rate: fee,
                    points: -partner_share,
                });
            }
            Ok(record(
                r,
                id,
                Kind::ReverseEarn,
                &member,
                points,
                Some(orig_id),
                None,
                receipt,
            ))
        }
        Op::ReverseBurn { original, points } => {
            let o = original_of(txns, r, original, Kind::Burn)?;
            let (orig_id, member, remaining) =
                (o.id, o.member.clone(), o.points - o.reversed_points);
            let points = whole_if_zero(*points, remaining, original)?;
            let m = ledgers
                .get_mut(&member)
                .expect("member of a loaded original is loaded");
            let burn_slices = slices
                .get_mut(&orig_id)
                .expect("slices of a burn are loaded");
            let id = ids.pop_front().expect("one id reserved per request");
            let allocations = m.reverse_burn(id, burn_slices, points, now)?;
            let receipt = Receipt {
                transaction_id: r.transaction_id.clone(),
                ledger_id: id,
                kind: Kind::ReverseBurn,
                member_id: member.clone(),
                points,
                balance_after: m.balance(now),
                accepted_at: now,
                slices: ledger::by_issuer(&allocations),
                debt_created: 0,
                debt_repaid: 0,
                original_transaction_id: Some(original.clone()),
                parts: vec![],
                tier: None,
                hold: None,
            };
            writes.allocations.extend(allocations);
            Ok(record(
                r,
                id,
                Kind::ReverseBurn,
                &member,
                points,
                Some(orig_id),
                None,
                receipt,
            ))
        }
    }
}

fn original_of<'a>(
    txns: &'a HashMap<Key, TxnRecord>,
    r: &Request,
    original: &str,
    expected: Kind,
) -> Result<&'a TxnRecord, Rejection> {
    let o = txns
        .get(&key(&r.partner, original))
        .ok_or_else(|| Rejection::UnknownTransaction(original.to_string()))?;
    if o.kind != expected {
        return Err(Rejection::WrongKind {
            id: original.to_string(),
            expected,
            found: o.kind,
        });
    }
    Ok(o)
}

/// A reversal of 0 points means "all that is left".
fn whole_if_zero(points: i64, remaining: i64, original: &str) -> Result<i64, Rejection> {
    if remaining == 0 {
        return Err(Rejection::FullyReversed(original.to_string()));
    }
    match points {
        0 => Ok(remaining),
        p if p < 0 => Err(Refusal::NonPositive(p).into()),
        p => Ok(p),
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    r: &Request,
    id: i64,
    kind: Kind,
    member: &str,
    points: i64,
    original_id: Option<i64>,
    purchase: Option<(rust_decimal::Decimal, String)>,
    receipt: Receipt,
) -> TxnRecord {
    TxnRecord {
        id,
        partner: r.partner.clone(),
        partner_txn_id: r.transaction_id.clone(),
        kind,
        member: member.to_string(),
        points,
        reversed_points: 0,
        parts_reversed: if kind == Kind::Earn {
            vec![0; receipt.parts.len()]
        } else {
            vec![]
        },
        original_id,
        purchase: purchase.map(|(a, c)| (a.to_string(), c)),
        request_hash: r.hash.to_vec(),
        accepted_at: receipt.accepted_at,
        receipt,
    }
}
