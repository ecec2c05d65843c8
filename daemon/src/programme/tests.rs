use super::*;

const T0: Micros = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn campaign(id: &str, effect: Effect) -> Campaign {
    Campaign {
        id: id.into(),
        name: id.into(),
        starts_at: T0,
        ends_at: T0 + 10 * DAY,
        partners: vec![],
        partner_kinds: vec![],
        min_amount: None,
        tiers: vec![],
        category: None,
        welcome: false,
        effect,
        cap_per_member: None,
        funder: Funder::Partner,
        created_at: T0,
        created_by: "t".into(),
        ended_at: None,
    }
}

fn facts(base: i64, now: Micros) -> EarnFacts<'static> {
    EarnFacts {
        partner: "bistro",
        partner_kind: "restaurant",
        base,
        amount: Some(Decimal::from(base)),
        category: None,
        tier: Some("bronze"),
        earned_here_before: false,
        stamps: None,
        now,
    }
}

#[test]
fn promotion_is_immediate_and_reviews_drop_one_rung_at_most() {
    let l = Ladder::default_ladder();
    let mut m = MemberProgramme::default();
    m.add_qualifying(T0, 25_000);
    assert!(m.promote(&l, T0));
    assert_eq!(m.tier_index(), 3);
    // A year on, nothing earned since: the window is empty, the review drops one rung.
    let review = l.next_review(T0);
    m.apply_reviews(&l, review - 1);
    assert_eq!(m.tier_index(), 3);
    m.apply_reviews(&l, review);
    assert_eq!(m.tier_index(), 2);
    assert_eq!(m.tier.as_ref().unwrap().since, review);
    // Two more years: two more reviews, one rung each.
    m.apply_reviews(&l, l.next_review(l.next_review(review)));
    assert_eq!(m.tier_index(), 0);
}

#[test]
fn the_window_drops_days_older_than_its_months() {
    let l = Ladder::default_ladder();
    let mut m = MemberProgramme::default();
    m.add_qualifying(T0, 1_000);
    assert_eq!(m.qualifying_at(&l, T0), 1_000);
    let year = add_months(T0, 12).unwrap();
    assert_eq!(m.qualifying_at(&l, year - 1), 1_000);
    assert_eq!(m.qualifying_at(&l, year + DAY), 0);
}

#[test]
fn bonuses_stack_on_the_base_and_caps_cut() {
    let l = Ladder::default_ladder();
    let mut m = MemberProgramme {
        tier: Some(TierState {
            tier: 2,
            since: T0,
            review_at: T0 + 365 * DAY,
        }),
        ..Default::default()
    };
    let mut double = campaign("a-double", Effect::Multiplier(Decimal::from(2)));
    double.cap_per_member = Some(150);
    m.granted.insert("a-double".into(), 100);
    let bonus = campaign("b-bonus", Effect::Bonus(30));
    let parts = price_earn(Some(&l), &[bonus, double], &m, &facts(101, T0))
        .unwrap()
        .parts;
    let got: Vec<(PartKind, &str, i64)> = parts
        .iter()
        .map(|p| (p.kind, p.source.as_str(), p.points))
        .collect();
    assert_eq!(
        got,
        vec![
            (PartKind::Base, "", 101),
            (PartKind::Tier, "gold", 50),
            (PartKind::Campaign, "a-double", 50),
            (PartKind::Campaign, "b-bonus", 30),
        ]
    );
}

#[test]
fn windows_are_inclusive_at_start_exclusive_at_end() {
    let c = campaign("c", Effect::Bonus(5));
    assert!(c.applies(&facts(1, T0)));
    assert!(!c.applies(&facts(1, T0 - 1)));
    assert!(c.applies(&facts(1, T0 + 10 * DAY - 1)));
    assert!(!c.applies(&facts(1, T0 + 10 * DAY)));
}

#[test]
fn welcome_applies_only_before_the_first_earn_here() {
    let mut c = campaign("w", Effect::Bonus(5));
    c.welcome = true;
    let mut f = facts(1, T0);
    assert!(c.applies(&f));
    f.earned_here_before = true;
    assert!(!c.applies(&f));
}

#[test]
fn validation_names_the_field() {
    let partners: BTreeMap<String, String> = [("bistro".to_string(), "restaurant".to_string())]
        .into_iter()
        .collect();
    let mut c = campaign("x", Effect::Multiplier(Decimal::ZERO));
    assert_eq!(
        validate(&c, &partners, None, &[]).unwrap_err().field,
        "multiplier"
    );
    c.effect = Effect::Bonus(5);
    c.ends_at = c.starts_at;
    assert_eq!(
        validate(&c, &partners, None, &[]).unwrap_err().field,
        "ends"
    );
    c.ends_at = c.starts_at + DAY;
    c.partners = vec!["nobody".into()];
    assert_eq!(
        validate(&c, &partners, None, &[]).unwrap_err().field,
        "partners"
    );
    c.partners = vec![];
    c.cap_per_member = Some(MAX_POINTS_PER_TRANSACTION);
    let mut other = campaign("y", Effect::Bonus(1));
    other.cap_per_member = Some(1);
    assert_eq!(
        validate(&c, &partners, None, &[other]).unwrap_err().reason,
        "CAPS_OVERFLOW"
    );
}
