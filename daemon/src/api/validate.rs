//! Checks on request fields that need no database: ids, money, points. Each failure names the
//! field and says what is expected.

use super::error::ApiError;
use crate::config::{Currency, Partner};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use std::str::FromStr;

/// Longest transaction or member id.
pub const MAX_ID_LEN: usize = 64;

/// An id: 1..=64 printable ASCII characters, no spaces.
pub fn id(field: &'static str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::field(field, "MISSING_ID", "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ApiError::field(
            field,
            "ID_TOO_LONG",
            format!(
                "is {} characters long; at most {MAX_ID_LEN} are allowed",
                value.len()
            ),
        ));
    }
    if !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::field(
            field,
            "MALFORMED_ID",
            "may hold only printable ASCII without spaces",
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
) -> Result<Decimal, ApiError> {
    if currency != coalition.code {
        return Err(ApiError::field(
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
        return Err(ApiError::field(
            field,
            "NEGATIVE_AMOUNT",
            format!("{amount:?} is negative; amounts must be positive"),
        ));
    }
    if !plain {
        return Err(ApiError::field(
            field,
            "MALFORMED_AMOUNT",
            format!("{amount:?} is not a decimal amount like \"12.50\""),
        ));
    }
    let value = Decimal::from_str(amount).map_err(|_| {
        ApiError::field(
            field,
            "AMOUNT_TOO_LARGE",
            format!("{amount:?} is too large"),
        )
    })?;
    if value.scale() > coalition.minor_units {
        return Err(ApiError::field(
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
        return Err(ApiError::field(
            field,
            "AMOUNT_NOT_POSITIVE",
            "must be greater than zero",
        ));
    }
    Ok(value)
}

/// Points a purchase earns at `partner`: floor(amount × earn rate).
pub fn purchase_points(amount: Decimal, partner: &Partner) -> Result<i64, ApiError> {
    let points = amount
        .checked_mul(partner.earn_rate)
        .and_then(|p| p.floor().to_i64())
        .ok_or_else(|| {
            ApiError::field(
                "purchase.amount",
                "POINTS_OVERFLOW",
                "earns more points than the ledger can hold",
            )
        })?;
    if points < 1 {
        return Err(ApiError::field(
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
pub fn bonus(points: i64, partner: &Partner) -> Result<i64, ApiError> {
    if points < 1 {
        return Err(ApiError::field(
            "bonus_points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is not a positive number of points"),
        ));
    }
    if points > partner.max_bonus_points {
        return Err(ApiError::field(
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

/// Points of a burn: at least 1.
pub fn burn_points(points: i64) -> Result<i64, ApiError> {
    if points < 1 {
        return Err(ApiError::field(
            "points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is not a positive number of points"),
        ));
    }
    Ok(points)
}

/// Points of a reversal: 0 (everything left) or more.
pub fn reversal_points(points: i64) -> Result<i64, ApiError> {
    if points < 0 {
        return Err(ApiError::field(
            "points",
            "POINTS_NOT_POSITIVE",
            format!("{points} is negative; use 0 to reverse everything left"),
        ));
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

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
