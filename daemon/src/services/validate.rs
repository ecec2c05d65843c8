//! Checks on request fields that need no database: ids, money, points. Each failure names the
//! field and says what is expected.

use super::error::ServiceError;
use crate::config::{Currency, Partner};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use std::str::FromStr;

/// Longest transaction or member id.
pub const MAX_ID_LEN: usize = 64;

/// An id: 1..=64 printable ASCII characters, no spaces.
pub fn id(field: &'static str, value: &str) -> Result<(), ServiceError> {
    if value.is_empty() {
        return Err(ServiceError::field(field, "MISSING_ID", "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ServiceError::field(
            field,
            "ID_TOO_LONG",
            format!(
                "is {} characters long; at most {MAX_ID_LEN} are allowed",
                value.len()
            ),
        ));
    }
    if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ServiceError::field(
            field,
            "MALFORMED_ID",
            "may hold only printable ASCII without spaces",
        ));
    }
    // Pseudonyms (retention, ForgetMember) begin with `~`: no call may name one, or a caller
    // who learned a pseudonym could add to a forgotten member's books.
    if field == "member_id" && value.starts_with('~') {
        return Err(ServiceError::field(
            field,
            "RESERVED_ID",
            "member ids beginning with `~` are reserved for pseudonyms",
        ));
    }
    Ok(())
}

/// A money amount in the coalition's currency: a plain positive decimal with at most the
/// currency's minor-unit digits.
pub fn money(
    field: &'static str,
    amount: &str,
    currency: &str,
    coalition: Currency,
) -> Result<Decimal, ServiceError> {
    if currency != coalition.code {
        return Err(ServiceError::field(
            field,
            "CURRENCY_NOT_ACCEPTED",
            format!(
                "currency {currency:?} is not accepted; this coalition settles in {}",
                coalition.code
            ),
        ));
    }
    let plain = !amount.is_empty()
        && amount.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && amount.bytes().filter(|&b| b == b'.').count() <= 1
        && !amount.starts_with('.')
        && !amount.ends_with('.');
    if amount.starts_with('-') {
        return Err(ServiceError::field(
            field,
            "NEGATIVE_AMOUNT",
            format!("{amount:?} is negative; amounts must be positive"),
        ));
    }
    if !plain {
        return Err(ServiceError::field(
            field,
            "MALFORMED_AMOUNT",
            format!("{amount:?} is not a decimal amount like \"12.50\""),
        ));
    }
    let value = Decimal::from_str(amount).map_err(|_| {
        ServiceError::field(
            field,
            "AMOUNT_TOO_LARGE",
            format!("{amount:?} is too large"),
        )
    })?;
    if value.scale() > coalition.minor_units {
        return Err(ServiceError::field(
            field,
            "AMOUNT_TOO_PRECISE",
            format!(
                "{amount:?} has {} decimals; {} allows {}",
                value.scale(),
                coalition.code,
                coalition.minor_units
            ),
        ));
    }
    if value.is_zero() {
        return Err(ServiceError::field(
            field,
            "AMOUNT_NOT_POSITIVE",
            "must be greater than zero",
        ));
    }
    Ok(value)
}

/// Points a purchase earns at `partner`: floor(amount × earn rate).
pub fn purchase_points(amount: Decimal, partner: &Partner) -> Result<i64, ServiceError> {
    let points = amount
        .checked_mul(partner.earn_rate)
        .and_then(|p| p.floor().to_i64())
        .ok_or_else(|| {
            ServiceError::field(
                "purchase.amount",
                "POINTS_OVERFLOW",
                "earns more points than the ledger can hold",
            )
        })?;
    if points > MAX_POINTS {
        return Err(ServiceError::field(
            "purchase.amount",
            "POINTS_OVERFLOW",
            format!("earns {points} points; one transaction may move at most {MAX_POINTS}"),
        ));
    }
    if points < 1 {
        return Err(ServiceError::field(
            "purchase.amount",
            "NO_POINTS_EARNED",
            format!(
                "{amount} earns no points at {}'s earn rate of {} per unit",
                partner.id, partner.earn_rate
            ),
        ));
    }
    Ok(points)
}

/// An explicit bonus: 1..=the partner's cap.
pub fn bonus(points: i64, partner: &Partner) -> Result<i64, ServiceError> {
    if points < 1 {
        return Err(ServiceError::field(
            "bonus_points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is not a positive number of points"),
        ));
    }
    if points > partner.max_bonus_points {
        return Err(ServiceError::field(
            "bonus_points",
            "BONUS_ABOVE_CAP",
            format!(
                "{points} is above {}'s bonus cap of {}",
                partner.id, partner.max_bonus_points
            ),
        ));
    }
    Ok(points)
}

/// Points of a burn: 1..=[`MAX_POINTS`].
pub fn burn_points(points: i64) -> Result<i64, ServiceError> {
    if points < 1 {
        return Err(ServiceError::field(
            "points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is not a positive number of points"),
        ));
    }
    at_most_max("points", points)
}

/// Points of a reversal: 0 (everything left) or more, up to [`MAX_POINTS`].
pub fn reversal_points(points: i64) -> Result<i64, ServiceError> {
    if points < 0 {
        return Err(ServiceError::field(
            "points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is negative; use 0 to reverse everything left"),
        ));
    }
    at_most_max("points", points)
}

/// The most points one transaction may move.
pub const MAX_POINTS: i64 = crate::ledger::MAX_POINTS_PER_TRANSACTION;

fn at_most_max(field: &'static str, points: i64) -> Result<i64, ServiceError> {
    if points > MAX_POINTS {
        return Err(ServiceError::field(
            field,
            "POINTS_OVERFLOW",
            format!("{points} points; one transaction may move at most {MAX_POINTS}"),
        ));
    }
    Ok(points)
}

/// A business date (`YYYY-MM-DD`, four-digit year) within the calendar the coalition clears.
pub fn cycle(field: &'static str, s: &str) -> Result<chrono::NaiveDate, ServiceError> {
    let malformed = || {
        ServiceError::field(
            field,
            "MALFORMED_CYCLE",
            format!(
                "{s:?} is not a business date like 2026-11-21 between {} and {}",
                coalition_clearing::FIRST_CYCLE,
                coalition_clearing::LAST_CYCLE
            ),
        )
    };
    coalition_clearing::parse_business_date(s).ok_or_else(malformed)
}

/// A purchase category sent by a till (empty: none): 1..=64 letters, digits, '-', '_' or '.'.
pub fn category(c: &str) -> Result<Option<String>, ServiceError> {
    if c.is_empty() {
        return Ok(None);
    }
    if c.len() > 64
        || !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ServiceError::field(
            "category",
            "MALFORMED_CATEGORY",
            "use 1..=64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(Some(c.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Random text into every validator: an answer, never a panic.
        #[test]
        fn validators_never_panic(text in ".{0,80}", n in any::<i64>(), cur in "[A-Z]{0,4}") {
            let _ = id("f", &text);
            let _ = money("f", &text, &cur, EUR);
            let _ = money("f", &text, "EUR", EUR);
            let _ = cycle("f", &text);
            let _ = burn_points(n);
            let _ = reversal_points(n);
            let partner = crate::config::Partner {
                stamps: None,
                id: "p".into(), name: "P".into(), kind: "k".into(),
                earn_rate: Decimal::new(999_999_999, 6), redemption_rate: Decimal::ONE,
                issuance_fee: Decimal::ZERO, max_bonus_points: 100, rate_per_second: 1, burst: 1,
                account: None, liability_value: Decimal::ONE, retired_from: None, points_expire_on: None, points_taken_over: false, webhook: None,
            };
            let _ = bonus(n, &partner);
            if let Ok(amount) = money("f", &text, "EUR", EUR) {
                let _ = purchase_points(amount, &partner);
            }
        }

        /// Dates chrono would take but the calendar cannot clear are refused.
        #[test]
        fn cycles_outside_the_calendar_are_refused(y in -300_000i32..300_000, m in 1u32..13, d in 1u32..29) {
            let s = if (0..10_000).contains(&y) { format!("{y:04}-{m:02}-{d:02}") } else { format!("{y:+}-{m:02}-{d:02}") };
            let ok = cycle("cycle", &s).is_ok();
            prop_assert_eq!(ok, (2000..=2199).contains(&y), "{}", s);
        }
    }

    #[test]
    fn malformed_cycles_from_the_bugs_issue_are_refused() {
        for s in [
            "+262142-12-31",
            "-0001-01-01",
            "0000-01-01",
            "9999-12-31",
            "0026-11-30",
            "2026-1-01",
            " 2026-11-30",
        ] {
            let e = cycle("cycle", s).unwrap_err();
            assert!(
                matches!(
                    e,
                    ServiceError::InvalidField {
                        reason: "MALFORMED_CYCLE",
                        ..
                    }
                ),
                "{s}"
            );
        }
        assert!(cycle("cycle", "2026-11-30").is_ok());
    }

    const EUR: Currency = Currency {
        code: "EUR",
        minor_units: 2,
    };

    #[test]
    fn money_accepts_plain_amounts_only() {
        assert_eq!(
            money("m", "12.50", "EUR", EUR).unwrap(),
            Decimal::new(1250, 2)
        );
        for bad in [
            "",
            "1e3",
            "-1",
            "1.234",
            "0",
            "0.00",
            ".5",
            "5.",
            "1,5",
            " 1",
            "99999999999999999999999999999999",
        ] {
            assert!(money("m", bad, "EUR", EUR).is_err(), "{bad:?} accepted");
        }
        assert!(money("m", "1", "USD", EUR).is_err());
    }
}
