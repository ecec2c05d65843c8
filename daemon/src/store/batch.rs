//! The shared batch logic: given a backend's [`LedgerTx`], load what a batch of requests needs in a
//! few bulk reads, decide each request in order with the pure ledger (so two requests on one member
//! in one batch see each other), and hand the backend one set of [`Writes`].

use super::{LedgerTx, Op, Rejection, Request, StoreError, TxnRecord, Writes};
use crate::ledger::{self, Kind, MemberLedger, Micros, NewEarn, Receipt, Refusal, Reversible};
use std::collections::{HashMap, HashSet, VecDeque};

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
    for r in requests {
        match &r.op {
            Op::Earn { member, .. } | Op::Burn { member, .. } => members.push(member.clone()),
            Op::ReverseEarn { original, .. } | Op::ReverseBurn { original, .. } => {
                original_keys.push(key(&r.partner, original))
            }
        }
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
    let mut keys: Vec<Key> = requests
        .iter()
        .map(|r| key(&r.partner, &r.transaction_id))
        .collect();
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
    let mut ledgers: HashMap<String, MemberLedger> = tx
        .load_members(&members)
        .await?
        .into_iter()
        .map(|m| (m.member.clone(), m))
        .collect();
    let mut extra_lots = Vec::new();
    if !earn_originals.is_empty() {
        // A lot's id is the id of the earn that made it.
        extra_lots.extend(tx.load_lots(&earn_originals).await?);
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
        if let Some(m) = ledgers.get_mut(&lot.member)
            && !m.lots.iter().any(|l| l.id == lot.id)
        {
            m.lots.push(lot);
        }
    }
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
    let t_load = t0.elapsed();
    let known_before: HashSet<String> = ledgers.keys().cloned().collect();

    // 3. Decide each request in order.
    let mut ids: VecDeque<i64> = tx.reserve_txn_ids(requests.len()).await?.into();
    let mut writes = Writes {
        cycle,
        ..Writes::default()
    };
    let mut reversed: HashMap<i64, i64> = HashMap::new();
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        let k = key(&r.partner, &r.transaction_id);
        if let Some(existing) = txns.get(&k) {
            out.push(if existing.request_hash == r.hash {
                Ok(existing.receipt.clone())
            } else {
                Err(Rejection::IdReused(r.transaction_id.clone()))
            });
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
        );
        match decided {
            Ok(record) => {
                if let Some(orig) = record.original_id {
                    let o = txns
                        .values_mut()
                        .find(|t| t.id == orig)
                        .expect("original is loaded");
                    o.reversed_points += record.points;
                    reversed.insert(orig, o.reversed_points);
                }
                out.push(Ok(record.receipt.clone()));
                writes.new_txns.push(record.clone());
                txns.insert(k, record);
            }
            Err(e) => out.push(Err(e)),
        }
    }

    // 4. Collect what changed. Reversal counters of transactions new in this batch are already
    //    in their records.
    for t in writes.new_txns.iter_mut() {
        if let Some(r) = reversed.remove(&t.id) {
            t.reversed_points = r;
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
    writes.reversed = reversed.into_iter().collect();
    writes.reversed.sort();
    let mut touched: Vec<&MemberLedger> = ledgers.values().filter(|m| m.known).collect();
    touched.sort_by(|a, b| a.member.cmp(&b.member));
    for m in touched {
        writes
            .lots
            .extend(m.lots.iter().filter(|l| l.dirty).cloned());
        writes
            .debts
            .extend(m.debts.iter().filter(|d| d.dirty).cloned());
        if !known_before.contains(&m.member) {
            writes.new_members.push((m.member.clone(), ctx.now));
        }
    }
    let t_decide = t0.elapsed();
    if !writes.new_txns.is_empty() {
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
fn prices(ctx: &Context, partner: &str, at: Micros) -> Result<crate::prices::Prices, Rejection> {
    ctx.prices
        .at(partner, at)
        .ok_or_else(|| Rejection::Unpriced(partner.to_string()))
}

fn decide(
    ids: &mut VecDeque<i64>,
    r: &Request,
    ctx: &Context,
    ledgers: &mut HashMap<String, MemberLedger>,
    txns: &mut HashMap<Key, TxnRecord>,
    slices: &mut HashMap<i64, Vec<Reversible>>,
    writes: &mut Writes,
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
            points,
            purchase,
        } => {
            let fee = prices(ctx, &r.partner, now)?.issuance_fee;
            let m = ledgers
                .entry(member.clone())
                .or_insert_with(|| MemberLedger::new_member(member));
            let id = ids.pop_front().expect("one id reserved per request");
            let effect = m.earn(NewEarn {
                txn: id,
                issuer: &r.partner,
                points: *points,
                now,
                expires_at: ctx.expire_after.map(|d| now + d),
            })?;
            let receipt = Receipt {
                transaction_id: r.transaction_id.clone(),
                ledger_id: id,
                kind: Kind::Earn,
                member_id: member.clone(),
                points: *points,
                balance_after: m.balance(now),
                accepted_at: now,
                slices: vec![],
                debt_created: 0,
                debt_repaid: effect.debt_repaid,
                original_transaction_id: None,
            };
            writes.allocations.extend(effect.repayments);
            writes.issuance.push(super::IssuanceRow {
                txn: id,
                issuer: r.partner.clone(),
                fee_rate: fee,
                points: *points,
            });
            Ok(record(
                r,
                id,
                Kind::Earn,
                member,
                *points,
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
            let receipt = Receipt {
                transaction_id: r.transaction_id.clone(),
                ledger_id: id,
                kind: Kind::Burn,
                member_id: member.clone(),
                points: *points,
                balance_after: m.balance(now),
                accepted_at: now,
                slices: ledger::by_issuer(&allocations),
                debt_created: 0,
                debt_repaid: 0,
                original_transaction_id: None,
            };
            slices.insert(
                id,
                allocations
                    .iter()
                    .map(|a| Reversible {
                        allocation: a.clone(),
                        remaining: a.points,
                    })
                    .collect(),
            );
            writes.allocations.extend(allocations);
            Ok(record(
                r,
                id,
                Kind::Burn,
                member,
                *points,
                None,
                None,
                receipt,
            ))
        }
        Op::ReverseEarn { original, points } => {
            let o = original_of(txns, r, original, Kind::Earn)?;
            let (orig_id, member, remaining) =
                (o.id, o.member.clone(), o.points - o.reversed_points);
            // A shortfall taken from other lots is redeemed here at today's rate; the fee refunded
            // is the one charged when the earn was accepted.
            let rate = &prices(ctx, &r.partner, now)?.redemption_rate;
            let fee = prices(ctx, &r.partner, o.accepted_at)?.issuance_fee;
            let points = whole_if_zero(*points, remaining, original)?;
            let m = ledgers
                .get_mut(&member)
                .expect("member of a loaded original is loaded");
            let id = ids.pop_front().expect("one id reserved per request");
            let effect = m.reverse_earn(id, orig_id, &r.partner, *rate, points, remaining, now)?;
            let mut slices_shown = vec![];
            if effect.from_own_lot > 0 {
                slices_shown.push((r.partner.clone(), effect.from_own_lot));
            }
            slices_shown.extend(ledger::by_issuer(&effect.allocations));
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
            };
            if effect.unswept > 0
                && let Some(lot) = m.lots.iter().find(|l| l.id == orig_id)
            {
                writes.breakage.push(super::BreakageFact {
                    lot: lot.id,
                    member: lot.member.clone(),
                    issuer: lot.issuer.clone(),
                    points: -effect.unswept,
                    txn: Some(id),
                });
            }
            writes.allocations.extend(effect.allocations);
            writes.issuance.push(super::IssuanceRow {
                txn: id,
                issuer: r.partner.clone(),
                fee_rate: fee,
                points: -points,
            });
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
        original_id,
        purchase: purchase.map(|(a, c)| (a.to_string(), c)),
        request_hash: r.hash.to_vec(),
        accepted_at: receipt.accepted_at,
        receipt,
    }
}
