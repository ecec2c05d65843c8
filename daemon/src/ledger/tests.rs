use super::*;
use proptest::prelude::*;

const DAY: Micros = 86_400_000_000;
fn rate() -> Decimal {
    Decimal::new(1, 2)
}

fn earn(
    m: &mut MemberLedger,
    txn: i64,
    issuer: &str,
    points: i64,
    now: Micros,
    exp: Option<Micros>,
) -> EarnEffect {
    m.earn(NewEarn {
        txn,
        issuer,
        points,
        now,
        expires_at: exp,
    })
    .unwrap()
}

#[test]
fn burn_takes_soonest_expiry_first_then_oldest() {
    let mut m = MemberLedger::new_member("m");
    earn(&mut m, 1, "air", 100, 0, Some(300 * DAY));
    earn(&mut m, 2, "shop", 100, DAY, Some(100 * DAY)); // expires first
    earn(&mut m, 3, "food", 100, 2 * DAY, None); // never: last
    let a = m.burn(4, "food", rate(), 250, 3 * DAY).unwrap();
    let got: Vec<(&str, i64)> = a.iter().map(|a| (a.issuer.as_str(), a.points)).collect();
    assert_eq!(got, vec![("shop", 100), ("air", 100), ("food", 50)]);
    assert_eq!(m.balance(3 * DAY), 50);
}

#[test]
fn expired_lots_do_not_count() {
    let mut m = MemberLedger::new_member("m");
    earn(&mut m, 1, "air", 100, 0, Some(10 * DAY));
    assert_eq!(m.balance(10 * DAY - 1), 100);
    assert_eq!(
        m.balance(10 * DAY),
        0,
        "a lot stops counting at its expiry instant"
    );
    assert!(matches!(
        m.burn(2, "air", rate(), 1, 10 * DAY),
        Err(Refusal::InsufficientPoints { .. })
    ));
}

#[test]
fn partial_burn_reversal_gives_latest_slices_back_first() {
    let mut m = MemberLedger::new_member("m");
    let l1 = earn(&mut m, 1, "air", 100, 0, Some(10 * DAY)).lot;
    let l2 = earn(&mut m, 2, "shop", 100, 0, Some(20 * DAY)).lot;
    let a = m.burn(3, "food", rate(), 150, DAY).unwrap();
    let mut slices: Vec<Reversible> = a
        .iter()
        .map(|a| Reversible {
            allocation: a.clone(),
            remaining: a.points,
        })
        .collect();
    let r = m.reverse_burn(4, &mut slices, 70, DAY).unwrap();
    // the burn took 100 from l1 then 50 from l2; the latest slice (l2) goes back first
    assert_eq!(
        r.iter().map(|a| (a.lot, a.points)).collect::<Vec<_>>(),
        vec![(l2, -50), (l1, -20)]
    );
    assert_eq!(m.balance(DAY), 120);
    let e = m.reverse_burn(5, &mut slices, 81, DAY).unwrap_err();
    assert_eq!(
        e,
        Refusal::BeyondRemaining {
            remaining: 80,
            requested: 81
        }
    );
}

#[test]
fn earn_reversal_shortfall_then_debt_repaid_by_next_earn() {
    let mut m = MemberLedger::new_member("m");
    let own = earn(&mut m, 1, "air", 100, 0, None).lot;
    earn(&mut m, 2, "shop", 30, 0, None);
    m.burn(3, "food", rate(), 90, 0).unwrap(); // own lot 100 -> 10 left (both never expire: oldest first by id)
    let r = m.reverse_earn(4, own, "air", rate(), 100, 100, 0).unwrap();
    assert_eq!(r.from_own_lot, 10);
    assert_eq!(
        r.allocations
            .iter()
            .map(|a| (a.issuer.as_str(), a.redeemer.as_str(), a.points))
            .collect::<Vec<_>>(),
        vec![("shop", "air", 30)]
    );
    assert_eq!(r.debt_created, 60);
    assert_eq!(m.balance(0), -60);
    let e = earn(&mut m, 5, "food", 100, 0, None);
    assert_eq!(e.debt_repaid, 60);
    assert_eq!(e.repayments[0].issuer, "food");
    assert_eq!(e.repayments[0].redeemer, "air");
    assert_eq!(m.balance(0), 40);
    assert_eq!(m.debt(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Earn(u8, i64, bool),
    Burn(u8, i64),
    ReverseEarn(usize, i64),
    ReverseBurn(usize, i64),
    Wait(i64),
    Sweep,
}

/// Bug 3 of the bugs issue: a lot of air's expires unspent and is swept; the member holds shop's
/// points; air reverses its earn. Only spent points are a shortfall: the reversal takes the swept
/// points back (undoing their breakage), nothing from shop's lot, no debt.
#[test]
fn earn_reversal_of_an_expired_lot_takes_its_own_points_not_other_lots() {
    let mut m = MemberLedger::new_member("m");
    let air = earn(&mut m, 1, "air", 100, 0, Some(10 * DAY)).lot;
    let shop = earn(&mut m, 2, "shop", 100, 0, None).lot;
    // Unswept: the expired points simply leave the lot.
    let mut unswept = m.clone();
    let r = unswept
        .reverse_earn(3, air, "air", rate(), 100, 100, 11 * DAY)
        .unwrap();
    assert_eq!(
        (
            r.from_own_lot,
            r.unswept,
            r.allocations.len(),
            r.debt_created
        ),
        (100, 0, 0, 0)
    );
    assert_eq!(unswept.balance(11 * DAY), 100, "shop's points stay");
    // Swept: the breakage is undone.
    for l in m.lots.iter_mut().filter(|l| l.id == air) {
        l.expired = l.points_left;
        l.points_left = 0;
    }
    let r = m
        .reverse_earn(3, air, "air", rate(), 100, 100, 11 * DAY)
        .unwrap();
    assert_eq!(
        (
            r.from_own_lot,
            r.unswept,
            r.allocations.len(),
            r.debt_created
        ),
        (100, 100, 0, 0)
    );
    assert_eq!(m.balance(11 * DAY), 100, "shop's points stay");
    let a = m.lots.iter().find(|l| l.id == air).unwrap();
    assert_eq!((a.points_left, a.expired, a.reversed), (0, 0, 100));
    assert_eq!(
        m.lots.iter().find(|l| l.id == shop).unwrap().points_left,
        100
    );
}

/// Part spent, part expired: the spent part is the only shortfall.
#[test]
fn earn_reversal_shortfall_is_only_what_was_spent() {
    let mut m = MemberLedger::new_member("m");
    let air = earn(&mut m, 1, "air", 100, 0, Some(10 * DAY)).lot;
    earn(&mut m, 2, "shop", 100, 0, None);
    m.burn(3, "food", rate(), 130, DAY).unwrap(); // 100 of air, 30 of shop... air expires first
    let left_air = m.lots.iter().find(|l| l.id == air).unwrap().points_left;
    assert_eq!(left_air, 0);
    let mut m2 = MemberLedger::new_member("m");
    let air2 = earn(&mut m2, 1, "air", 100, 0, Some(10 * DAY)).lot;
    earn(&mut m2, 2, "shop", 100, 0, None);
    m2.burn(3, "food", rate(), 60, DAY).unwrap(); // 60 of air's; 40 left expire
    let r = m2
        .reverse_earn(4, air2, "air", rate(), 100, 100, 11 * DAY)
        .unwrap();
    assert_eq!((r.from_own_lot, r.debt_created), (40, 0));
    assert_eq!(
        r.allocations.iter().map(|a| a.points).sum::<i64>(),
        60,
        "the 60 spent come from shop"
    );
    assert_eq!(m2.balance(11 * DAY), 40);
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1i64..500, any::<bool>()).prop_map(|(p, n, e)| Op::Earn(p, n, e)),
        (0u8..3, 1i64..500).prop_map(|(p, n)| Op::Burn(p, n)),
        (0usize..20, 1i64..300).prop_map(|(i, n)| Op::ReverseEarn(i, n)),
        (0usize..20, 1i64..300).prop_map(|(i, n)| Op::ReverseBurn(i, n)),
        (1i64..40).prop_map(Op::Wait),
        Just(Op::Sweep),
    ]
}

proptest! {
    /// Over random sequences: balance = live lots − debt matches the running totals
    /// earned − burned + burns reversed − earns reversed − expired, and no lot goes negative.
    #[test]
    fn ledger_totals_always_balance(ops in proptest::collection::vec(op(), 1..60)) {
        let partners = ["air", "shop", "food"];
        let mut m = MemberLedger::new_member("m");
        let mut now: Micros = 0;
        let (mut earned, mut burned, mut br, mut er) = (0i64, 0i64, 0i64, 0i64);
        let mut earns: Vec<(i64, i64, i64)> = vec![]; // (lot, points, reversed)
        let mut burns: Vec<Vec<Reversible>> = vec![];
        let mut txn = 0;
        for op in ops {
            txn += 1;
            match op {
                Op::Earn(p, n, expires) => {
                    let e = m.earn(NewEarn { txn, issuer: partners[p as usize], points: n, now, expires_at: expires.then_some(now + 30 * DAY) }).unwrap();
                    earned += n;
                    earns.push((e.lot, n, 0));
                }
                Op::Burn(p, n) => {
                    if let Ok(a) = m.burn(txn, partners[p as usize], rate(), n, now) {
                        prop_assert_eq!(a.iter().map(|a| a.points).sum::<i64>(), n);
                        burned += n;
                        burns.push(a.into_iter().map(|a| Reversible { remaining: a.points, allocation: a }).collect());
                    }
                }
                Op::ReverseEarn(i, n) => {
                    if let Some(e) = earns.get_mut(i) {
                        let issuer = m.lots.iter().find(|l| l.id == e.0).unwrap().issuer.clone();
                        if m.reverse_earn(txn, e.0, &issuer, rate(), n, e.1 - e.2, now).is_ok() {
                            e.2 += n;
                            er += n;
                        }
                    }
                }
                Op::ReverseBurn(i, n) => {
                    if let Some(b) = burns.get_mut(i)
                        && m.reverse_burn(txn, b, n, now).is_ok() { br += n; }
                }
                Op::Wait(d) => now += d * DAY,
                Op::Sweep => {
                    for l in m.lots.iter_mut().filter(|l| !l.live(now)) {
                        l.expired += l.points_left;
                        l.points_left = 0;
                    }
                }
            }
            let expired: i64 = m.lots.iter().map(|l| l.expired + if l.live(now) { 0 } else { l.points_left }).sum();
            prop_assert_eq!(earned - burned + br - er - expired, m.balance(now));
            for l in &m.lots {
                prop_assert!(l.points_left >= 0 && l.expired >= 0, "lot {:?}", l);
                prop_assert!(l.points_left + l.reversed + l.expired <= l.points, "lot {:?}", l);
            }
        }
    }
}

/// A member's open lots: (points left, expiry in days — `None` never —, earned day).
fn open_lots() -> impl Strategy<Value = Vec<(i64, Option<i64>, i64)>> {
    proptest::collection::vec((1i64..50, proptest::option::of(0i64..40), 0i64..20), 0..60)
}

proptest! {
    /// Reading only a member's first lots in spending order, when `prefix_covers` says they are
    /// enough, decides every burn of a batch exactly as reading all of them: the same allocations,
    /// refusals and balances.
    #[test]
    fn the_first_lots_decide_a_batch_as_all_of_them_would(
        lots in open_lots(),
        burns in proptest::collection::vec(1i64..120, 0..6),
        limit in 1usize..20,
        now_day in 0i64..30,
    ) {
        let now = now_day * DAY;
        let mut all = MemberLedger::new_member("m");
        all.known = true;
        for (i, (left, exp, earned)) in lots.iter().enumerate() {
            all.lots.push(Lot {
                id: i as i64 + 1,
                member: "m".into(),
                issuer: ["air", "shop", "food"][i % 3].into(),
                points: *left,
                points_left: *left,
                reversed: 0,
                expired: 0,
                earned_at: earned * DAY,
                expires_at: exp.map(|d| d * DAY),
                dirty: false,
            });
        }
        all.lots.sort_by_key(spend_key);
        let demand: i64 = burns.iter().sum();
        let first: Vec<Lot> = all.lots.iter().take(limit).cloned().collect();
        prop_assume!(prefix_covers(&first, limit, demand, now));
        let mut part = MemberLedger { lots: first, ..all.clone() };
        part.unloaded = all.open_points() - part.lots.iter().map(|l| l.points_left).sum::<i64>();
        prop_assert_eq!(part.balance(now), all.balance(now));
        for (k, points) in burns.iter().enumerate() {
            let txn = 1000 + k as i64;
            let a = all.burn(txn, "food", rate(), *points, now);
            let b = part.burn(txn, "food", rate(), *points, now);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(part.balance(now), all.balance(now));
            prop_assert_eq!(part.open_points(), all.open_points());
        }
    }
}

#[test]
fn the_next_expiry_is_known_only_past_the_last_lot_of_that_instant() {
    let lot = |id: i64, exp: Option<i64>| Lot {
        id,
        member: "m".into(),
        issuer: "air".into(),
        points: 10,
        points_left: 10,
        reversed: 0,
        expired: 0,
        earned_at: id,
        expires_at: exp.map(|d| d * DAY),
        dirty: false,
    };
    let mut m = MemberLedger::new_member("m");
    m.lots = vec![lot(1, Some(5)), lot(2, Some(6))];
    m.unloaded = 30;
    assert!(
        m.next_expiry_known(0),
        "a later lot was read: nothing else expires on day 5"
    );
    m.lots = vec![lot(1, Some(5)), lot(2, Some(5))];
    assert!(!m.next_expiry_known(0), "more lots of day 5 may be unread");
    m.unloaded = 0;
    assert!(m.next_expiry_known(0), "everything was read");
    m.lots = vec![lot(1, None)];
    m.unloaded = 30;
    assert!(m.next_expiry_known(0), "nothing live expires");
    m.lots = vec![lot(1, Some(1)), lot(2, None)];
    assert!(m.next_expiry_known(0));
}

proptest! {
    /// The kept activity says exactly which months had a transaction (within its span), and the
    /// instant of the second transaction, whatever order the months come in.
    #[test]
    fn kept_activity_is_the_set_of_active_months(
        months in proptest::collection::vec(24_000i64..24_100, 1..40),
    ) {
        let mut a = Activity::default();
        for (i, &m) in months.iter().enumerate() {
            a.record(m, i as Micros * 10);
        }
        let latest = *months.iter().max().unwrap();
        prop_assert_eq!(a.month, latest);
        for m in 23_990i64..24_110 {
            let kept = latest - m <= Activity::SPAN && months.contains(&m);
            prop_assert_eq!(a.active_in(m), kept, "month {}", m);
        }
        prop_assert_eq!(a.second_at, (months.len() > 1).then_some(10));
        prop_assert_eq!(a.first_at, Some(0));
        prop_assert!(a.mask > 0);
    }

    /// Recorded in any order (as two daemons' batches may commit), the kept activity is the same:
    /// the two earliest instants, the latest month, the same set of months.
    #[test]
    fn kept_activity_does_not_depend_on_commit_order(
        txns in proptest::collection::vec((24_000i64..24_100, 0i64..1_000), 1..30),
        seed in any::<u64>(),
    ) {
        let mut in_order = Activity::default();
        for &(m, at) in &txns {
            in_order.record(m, at);
        }
        let mut shuffled = txns.clone();
        // A Fisher-Yates shuffle driven by the seed (no rand crate in the tests).
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut other = Activity::default();
        for &(m, at) in &shuffled {
            other.record(m, at);
        }
        prop_assert_eq!(in_order, other);
        let mut ats: Vec<i64> = txns.iter().map(|t| t.1).collect();
        ats.sort();
        prop_assert_eq!(in_order.first_at, Some(ats[0]));
        prop_assert_eq!(in_order.second_at, ats.get(1).copied());
    }
}
