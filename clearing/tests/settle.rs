//! The clearing library: a worked example with hand-computed figures, and properties over random
//! ledgers.

use chrono::NaiveDate;
use coalition_clearing::*;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::str::FromStr;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn slice(issuer: &str, redeemer: &str, points: i64, rate: &str) -> Slice {
    Slice {
        issuer: issuer.into(),
        redeemer: redeemer.into(),
        points,
        rate: dec(rate),
        allocations: 1,
    }
}

fn input(slices: Vec<Slice>, issuance: Vec<Issuance>) -> Input {
    Input {
        cycle: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
        currency: "EUR".into(),
        minor_units: 2,
        rounding: Rounding::HalfAwayFromZero,
        slices,
        issuance,
        counts: Counts::default(),
        previous_digest: "ab".repeat(32),
        ledger_head: String::new(),
    }
}

#[test]
fn the_digest_is_of_the_content_and_the_seal_pins_the_ledger_head() {
    let a = settle(&input(vec![], vec![])).unwrap();
    assert!(!canonical(&a).contains("ledger_head"));
    assert_eq!(a.seal, "", "no ledger head, no seal");
    let mut i = input(vec![], vec![]);
    i.ledger_head = "cd".repeat(32);
    let b = settle(&i).unwrap();
    assert_eq!(a.digest, b.digest, "the ledger head is not content");
    assert_eq!(b.ledger_head, "cd".repeat(32));
    assert_eq!(digest_of(&b), b.digest);
    assert_eq!(seal_of(&b), b.seal);
    assert_eq!(b.seal.len(), 64);
    i.ledger_head = "ef".repeat(32);
    let c = settle(&i).unwrap();
    assert_eq!(c.digest, b.digest);
    assert_ne!(c.seal, b.seal, "another ledger head, another seal");
    // An edited ledger head no longer gives the stored seal.
    let mut edited = b.clone();
    edited.ledger_head = "ef".repeat(32);
    assert_ne!(seal_of(&edited), edited.seal);
}

#[test]
fn a_settlement_sealed_before_the_content_digest_keeps_its_digest() {
    let mut i = input(vec![], vec![]);
    i.ledger_head = "cd".repeat(32);
    let new = settle(&i).unwrap();
    // As it was stored before: no scheme, no seal, a digest over content and ledger head.
    let legacy = new.clone().with_scheme(DIGEST_PINNED);
    let json = serde_json::to_string(&legacy).unwrap();
    assert!(
        !json.contains("digest_scheme") && !json.contains("seal"),
        "{json}"
    );
    let back: Settlement = serde_json::from_str(&json).unwrap();
    assert_eq!(back.digest_scheme, DIGEST_PINNED);
    assert_eq!(digest_of(&back), legacy.digest);
    assert_ne!(legacy.digest, new.digest);
    // Its digest covers the ledger head.
    let mut edited = back.clone();
    edited.ledger_head = "ef".repeat(32);
    assert_ne!(digest_of(&edited), back.digest);
}

fn net(s: &Settlement, p: &str) -> (Decimal, Decimal) {
    let p = s.positions.iter().find(|x| x.participant == p).unwrap();
    (p.net_exact, p.net)
}

/// Three partners (air 0.010, food 0.0125, shop 0.0085 per point), a burn at food from air's and
/// shop's lots, a self-redemption at air, a partial reversal of the burn, an earn-reversal
/// shortfall redeemed at shop, an expiry, air's issuance fee of 0.0015 per point, and a rounding
/// residual.
#[test]
fn worked_example_to_the_cent() {
    let slices = vec![
        slice("air", "food", 420, "0.0125"), // burn 500 at food: 420 from air's lot
        slice("shop", "food", 80, "0.0125"), //                   80 from shop's lot
        slice("air", "air", 30, "0.010"),    // self-redemption: reported, moves no money
        slice("shop", "food", -80, "0.0125"), // partial reversal of the burn (200): latest slice first
        slice("air", "food", -120, "0.0125"), //   then 120 of air's
        slice("food", "shop", 10, "0.0085"), // shop reverses an earn; 10 short, taken from food's lot
    ];
    let issuance = vec![Issuance {
        issuer: "air".into(),
        points: 1003,
        fee_rate: dec("0.0015"),
        value: Decimal::ZERO,
    }];
    let mut i = input(slices, issuance);
    // An expiry: 75 points of shop's expired in the cycle. Breakage is counted, no money moves.
    i.counts = Counts {
        transactions: 9,
        earned: 1003,
        burned: 530,
        burns_reversed: 200,
        earns_reversed: 10,
        expired: 75,
    };
    let s = settle(&i).unwrap();
    let no_expiry = settle(&Input {
        counts: Counts {
            expired: 0,
            ..i.counts
        },
        ..i.clone()
    })
    .unwrap();
    assert_eq!(s.positions, no_expiry.positions, "breakage moves no money");
    assert_ne!(
        s.digest, no_expiry.digest,
        "but it is in the control totals the digest covers"
    );
    assert_eq!(s.totals.counts.expired, 75);

    // G[air][food] = 300 × 0.0125 = 3.75; G[shop][food] = 0; G[food][shop] = 10 × 0.0085 = 0.085.
    let g: Vec<(&str, &str, i64, Decimal)> = s
        .gross
        .iter()
        .map(|c| (c.issuer.as_str(), c.redeemer.as_str(), c.points, c.value))
        .collect();
    assert_eq!(
        g,
        vec![
            ("air", "food", 300, dec("3.75")),
            ("food", "shop", 10, dec("0.085")),
            ("shop", "food", 0, dec("0"))
        ]
    );
    assert_eq!(s.self_redemptions.len(), 1);
    assert_eq!(s.self_redemptions[0].value, dec("0.30"));
    // Fees: 1003 × 0.0015 = 1.5045.
    // Exact nets: air −3.75 − 1.5045 = −5.2545; food 3.75 − 0.085 = 3.665; shop 0.085; operator 1.5045.
    assert_eq!(net(&s, "air").0, dec("-5.2545"));
    assert_eq!(net(&s, "food").0, dec("3.665"));
    assert_eq!(net(&s, "shop").0, dec("0.085"));
    assert_eq!(net(&s, OPERATOR).0, dec("1.5045"));
    // Rounded half away from zero: −5.25, 3.67, 0.09, 1.50 = +0.01. The residual goes back from the
    // largest round-ups, food and shop (0.005 each), tie by id: food → 3.66.
    assert_eq!(net(&s, "air").1, dec("-5.25"));
    assert_eq!(net(&s, "food").1, dec("3.66"));
    assert_eq!(net(&s, "shop").1, dec("0.09"));
    assert_eq!(net(&s, OPERATOR).1, dec("1.50"));
    let pays: Vec<(&str, Direction, Decimal)> = s
        .payments
        .iter()
        .map(|p| (p.participant.as_str(), p.direction, p.amount))
        .collect();
    assert_eq!(
        pays,
        vec![
            ("air", Direction::PaysIn, dec("5.25")),
            ("food", Direction::PaidOut, dec("3.66")),
            (OPERATOR, Direction::PaidOut, dec("1.50")),
            ("shop", Direction::PaidOut, dec("0.09")),
        ]
    );
    let bi: Vec<(&str, &str, Decimal)> = s
        .bilateral
        .iter()
        .map(|b| (b.from.as_str(), b.to.as_str(), b.amount))
        .collect();
    assert_eq!(
        bi,
        vec![("air", "food", dec("3.75")), ("food", "shop", dec("0.085"))]
    );
    assert_eq!(s.totals.settled, dec("5.25"));
    assert_eq!(s.totals.fees, dec("1.5045"));
    assert_eq!(s.totals.allocations, 6);
    // The digest covers the content and the previous digest.
    let mut other = input(vec![], vec![]);
    other.previous_digest = "cd".repeat(32);
    assert_ne!(
        settle(&other).unwrap().digest,
        settle(&input(vec![], vec![])).unwrap().digest
    );
}

#[test]
fn jpy_and_bhd_round_to_their_own_minor_units() {
    let mut i = input(vec![slice("air", "food", 3, "0.3333")], vec![]);
    i.currency = "JPY".into();
    i.minor_units = 0;
    let s = settle(&i).unwrap();
    assert_eq!((net(&s, "air").1, net(&s, "food").1), (dec("-1"), dec("1")));
    i.currency = "BHD".into();
    i.minor_units = 3;
    let s = settle(&i).unwrap();
    assert_eq!(
        (net(&s, "air").1, net(&s, "food").1),
        (dec("-1.000"), dec("1.000"))
    );
}

/// The reproduction from the bugs issue: a rate pasted from a spreadsheet with 28 decimals made
/// Decimal round silently, the nets missed zero and `settle` panicked inside the clearing
/// transaction. Now such a rate is an error (and the config refuses it before it gets here).
#[test]
fn a_rate_with_too_many_decimals_is_an_error_not_a_panic() {
    let i = input(
        vec![
            slice("air", "food", 1, "0.0033333333333333333333333333"),
            slice("food", "shop", 1000, "0.01"),
            slice("shop", "air", 501, "0.01"),
        ],
        vec![],
    );
    assert!(matches!(settle(&i), Err(SettleError::RateTooPrecise(_))));
}

/// Amounts beyond what 96 bits hold at their scale are refused, never rounded to fit.
#[test]
fn an_amount_decimal_cannot_hold_exactly_is_an_error() {
    let i = input(
        vec![
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
            slice("air", "food", i64::MAX, "999.99999999"),
        ],
        vec![],
    );
    assert!(matches!(
        settle(&i),
        Err(SettleError::Inexact | SettleError::Overflow)
    ));
}

fn partner() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("air".to_string()),
        Just("food".to_string()),
        Just("shop".to_string())
    ]
}

/// Rates and fees as the config allows them: below 1,000 per point, at most 8 decimals.
fn rate() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (1i64..20_000, 0u32..5).prop_map(|(m, s)| Decimal::new(m, s + 2)),
        (1i64..100_000_000_000, 0u32..=MAX_RATE_DECIMALS).prop_map(|(m, s)| Decimal::new(m, s)),
    ]
    .prop_filter("below the config's bound", |r| *r < Decimal::from(1000))
}

/// Points of one slice: small, or as large as one transaction may move.
fn points() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 1i64..10_000, 1 => 1i64..=1_000_000_000_000]
}

fn ledger() -> impl Strategy<Value = (Vec<Slice>, Vec<Issuance>)> {
    let slices = proptest::collection::vec(
        (partner(), partner(), points(), rate(), any::<bool>()).prop_map(
            |(i, r, p, rate, reversed)| {
                let s = Slice {
                    issuer: i,
                    redeemer: r,
                    points: p,
                    rate,
                    allocations: 1,
                };
                // A burn, and sometimes its full reversal in the same cycle.
                if reversed {
                    vec![
                        s.clone(),
                        Slice {
                            points: -s.points,
                            ..s
                        },
                    ]
                } else {
                    vec![s]
                }
            },
        ),
        0..60,
    )
    .prop_map(|v| v.into_iter().flatten().collect::<Vec<_>>());
    let issuance = proptest::collection::vec(
        (partner(), -500i64..5_000_000_000, rate()).prop_map(|(i, p, f)| Issuance {
            issuer: i,
            points: p,
            fee_rate: f,
            value: Decimal::ZERO,
        }),
        0..4,
    );
    (slices, issuance)
}

proptest! {
    #[test]
    fn nets_sum_to_zero_before_and_after_rounding((slices, issuance) in ledger(), mu in 0u32..4, mode in 0u8..3) {
        let mut i = input(slices, issuance);
        i.minor_units = mu;
        i.rounding = [Rounding::HalfAwayFromZero, Rounding::HalfEven, Rounding::Down][mode as usize];
        let s = settle(&i).unwrap();
        prop_assert!(s.positions.iter().map(|p| p.net_exact).sum::<Decimal>().is_zero());
        prop_assert!(s.positions.iter().map(|p| p.net).sum::<Decimal>().is_zero());
        let unit = Decimal::new(1, mu);
        for p in &s.positions {
            prop_assert!(p.net.scale() <= mu);
            prop_assert!((p.net - p.net_exact).abs() < unit, "more than one minor unit off: {:?}", p);
        }
        // Where the residual went: to the nets that rounding had pushed furthest the other way,
        // one unit each, all in one direction.
        let strategy = match i.rounding {
            Rounding::HalfAwayFromZero => rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            Rounding::HalfEven => rust_decimal::RoundingStrategy::MidpointNearestEven,
            Rounding::Down => rust_decimal::RoundingStrategy::ToZero,
        };
        let plain: Vec<Decimal> = s.positions.iter().map(|p| p.net_exact.round_dp_with_strategy(mu, strategy)).collect();
        let residual: Decimal = plain.iter().copied().sum();
        let moved: Vec<usize> = (0..plain.len()).filter(|&k| s.positions[k].net != plain[k]).collect();
        prop_assert_eq!(Decimal::from(moved.len() as i64) * unit, residual.abs());
        let lean = |k: usize| if residual > Decimal::ZERO { plain[k] - s.positions[k].net_exact } else { s.positions[k].net_exact - plain[k] };
        for &k in &moved {
            prop_assert_eq!((s.positions[k].net - plain[k]).abs(), unit);
            prop_assert_eq!(s.positions[k].net - plain[k] > Decimal::ZERO, residual < Decimal::ZERO);
            for other in (0..plain.len()).filter(|o| !moved.contains(o)) {
                prop_assert!(lean(k) > lean(other) || (lean(k) == lean(other) && s.positions[k].participant < s.positions[other].participant),
                    "residual went to {} before {}", s.positions[k].participant, s.positions[other].participant);
            }
        }
        let paid_in: Decimal = s.payments.iter().filter(|p| p.direction == Direction::PaysIn).map(|p| p.amount).sum();
        prop_assert_eq!(paid_in, s.totals.settled);
    }

    #[test]
    fn every_allocation_lands_in_exactly_one_cell((slices, issuance) in ledger()) {
        let s = settle(&input(slices.clone(), issuance)).unwrap();
        let cells: Vec<&Cell> = s.gross.iter().chain(&s.self_redemptions).collect();
        prop_assert_eq!(cells.iter().map(|c| c.allocations).sum::<i64>(), slices.len() as i64);
        for c in &cells {
            let mine: Vec<&Slice> = slices.iter().filter(|x| x.issuer == c.issuer && x.redeemer == c.redeemer).collect();
            prop_assert_eq!(mine.len() as i64, c.allocations);
            prop_assert_eq!(mine.iter().map(|x| x.points).sum::<i64>(), c.points);
            prop_assert_eq!(mine.iter().map(|x| Decimal::from(x.points) * x.rate).sum::<Decimal>(), c.value);
        }
    }

    #[test]
    fn shuffled_input_gives_the_same_digest((slices, issuance) in ledger(), seed in any::<u64>()) {
        let a = settle(&input(slices.clone(), issuance.clone())).unwrap();
        let mut shuffled = slices;
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut iss = issuance;
        iss.reverse();
        let b = settle(&input(shuffled, iss)).unwrap();
        prop_assert_eq!(&a.digest, &b.digest);
        prop_assert_eq!(canonical(&a), canonical(&b));
    }

    #[test]
    fn a_burn_and_its_full_reversal_cancel(s in (partner(), partner(), points(), rate())) {
        let (i, r, p, rate) = s;
        let out = settle(&input(vec![slice(&i, &r, p, &rate.to_string()), slice(&i, &r, -p, &rate.to_string())], vec![])).unwrap();
        for pos in &out.positions {
            prop_assert!(pos.net.is_zero() && pos.net_exact.is_zero());
        }
        prop_assert!(out.payments.is_empty());
    }

    #[test]
    fn every_statement_adds_up_to_its_payment((slices, issuance) in ledger(), mu in 0u32..4) {
        let mut i = input(slices.clone(), issuance);
        i.minor_units = mu;
        let s = settle(&i).unwrap();
        for p in &s.positions {
            let mine: Vec<export::StatementLine> = slices
                .iter()
                .filter(|x| x.issuer == p.participant || x.redeemer == p.participant)
                .map(|x| export::StatementLine::allocation(1, 0, String::new(), String::new(), x.issuer.clone(), x.redeemer.clone(), x.points, x.rate))
                .collect();
            let lines = export::statement(&s, &p.participant, &mine);
            let sum: Decimal = lines.iter().map(|l| l.signed_value).sum();
            prop_assert_eq!(sum, p.net, "statement of {} does not add up", p.participant);
            let paid = s.payments.iter().find(|x| x.participant == p.participant).map_or(Decimal::ZERO, |x| match x.direction {
                Direction::PaidOut => x.amount,
                Direction::PaysIn => -x.amount,
            });
            prop_assert_eq!(paid, p.net);
            let csv = export::statement_csv(&s, &p.participant, &lines);
            let total = csv.lines().last().unwrap().split(',').nth(12).unwrap().to_string();
            prop_assert_eq!(Decimal::from_str(&total).unwrap(), p.net);
        }
        // Zero has one spelling in everything written.
        for text in [canonical(&s), export::settlement_csv(&s, None), export::settlement_json(&s, None)] {
            prop_assert!(!coalition_clearing::csv_writer::has_negative_zero(&text), "-0 in {}", text);
        }
    }
}

#[test]
fn a_cancelled_cycle_writes_zero_without_a_sign() {
    // air's burn at food is reversed in full: every amount is zero, and zero is 0.00.
    let s = settle(&input(
        vec![
            slice("air", "food", 125, "0.0125"),
            slice("air", "food", -125, "0.0125"),
        ],
        vec![Issuance {
            issuer: "shop".into(),
            points: 0,
            fee_rate: dec("0"),
            value: Decimal::ZERO,
        }],
    ))
    .unwrap();
    assert_eq!(
        s.positions
            .iter()
            .map(|p| p.participant.as_str())
            .collect::<Vec<_>>(),
        ["air", "food", "shop"],
        "participants are who moved points, the operator only when fees are due"
    );
    for p in &s.positions {
        assert_eq!(p.net.to_string(), "0.00");
    }
    for text in [
        canonical(&s),
        export::settlement_csv(&s, None),
        export::statement_csv(&s, "air", &[]),
    ] {
        assert!(
            !coalition_clearing::csv_writer::has_negative_zero(&text),
            "{text}"
        );
    }
    assert!(
        coalition_clearing::csv_writer::has_negative_zero("x,-0.00,y")
            && coalition_clearing::csv_writer::has_negative_zero("\"-0\"")
            && !coalition_clearing::csv_writer::has_negative_zero("2026-03-29")
            && !coalition_clearing::csv_writer::has_negative_zero("a-0b")
    );
}
