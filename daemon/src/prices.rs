//! Prices with history and the partner registry.
//!
//! A partner's redemption rate and issuance fee are *versions* in the database, each taking effect
//! at an instant and never changed once in effect. The writer prices every burn (and charges every
//! earn its issuance fee) by the version in force at the instant it accepts the call, and records
//! what it used (the allocation's rate, the earn's issuance row), so clearing never reads prices
//! from the config. A new version must take effect at least [`MIN_LEAD`] ahead, so that every
//! daemon on the database has read it before it applies; by default it takes effect at the next
//! cycle's opening, so no cycle is priced two ways by surprise.
//!
//! The registry keeps every partner the coalition has had (name, account, liability value,
//! retirement), so a partner that leaves the config still clears, pays and is paid.

use crate::ledger::Micros;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// How far ahead a new price version must take effect: every daemon re-reads prices every
/// [`REFRESH`], so this leaves room for a slow one.
pub const MIN_LEAD: Micros = 60_000_000;

/// How often a daemon re-reads price versions and the registry.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Who set a version loaded from the config at start.
pub const SET_BY_CONFIG: &str = "config";

/// One version of a partner's prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    /// The partner.
    pub partner: String,
    /// The instant it takes effect (0: since the beginning).
    pub effective_from: Micros,
    /// Money per point paid to the partner for each point burned there.
    pub redemption_rate: Decimal,
    /// Money per point the partner pays the operator for each point it issues.
    pub issuance_fee: Decimal,
    /// When it was recorded.
    pub set_at: Micros,
    /// `config` or the operator who set it.
    pub set_by: String,
}

/// The prices in force for a partner at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Redemption rate.
    pub redemption_rate: Decimal,
    /// Issuance fee.
    pub issuance_fee: Decimal,
}

/// Every partner's price versions, in memory, re-read from the database every [`REFRESH`].
#[derive(Debug, Default)]
pub struct PriceBook {
    versions: RwLock<BTreeMap<String, Vec<PriceVersion>>>,
}

impl PriceBook {
    /// A book of these versions.
    pub fn new(all: Vec<PriceVersion>) -> PriceBook {
        let book = PriceBook::default();
        book.replace(all);
        book
    }

    /// Replaces the book with what the database holds now.
    pub fn replace(&self, all: Vec<PriceVersion>) {
        let mut by_partner: BTreeMap<String, Vec<PriceVersion>> = BTreeMap::new();
        for v in all {
            by_partner.entry(v.partner.clone()).or_default().push(v);
        }
        for v in by_partner.values_mut() {
            v.sort_by_key(|v| v.effective_from);
        }
        // A poisoned lock only means a reader panicked; the map itself is whole.
        *self.versions.write().unwrap_or_else(|e| e.into_inner()) = by_partner;
    }

    /// The prices in force for `partner` at `at`, if any version has taken effect by then.
    pub fn at(&self, partner: &str, at: Micros) -> Option<Prices> {
        let map = self.versions.read().unwrap_or_else(|e| e.into_inner());
        in_force(map.get(partner)?, at).map(|v| Prices {
            redemption_rate: v.redemption_rate,
            issuance_fee: v.issuance_fee,
        })
    }

    /// The versions of one partner (or all), oldest first.
    pub fn versions(&self, partner: Option<&str>) -> Vec<PriceVersion> {
        let map = self.versions.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(p, _)| partner.is_none_or(|x| x == p.as_str()))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }
}

/// The version in force at `at` among `versions` (sorted by `effective_from`).
pub fn in_force(versions: &[PriceVersion], at: Micros) -> Option<&PriceVersion> {
    versions.iter().rev().find(|v| v.effective_from <= at)
}

/// A partner as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRecord {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Payout account, if configured.
    pub account: Option<coalition_clearing::export::Account>,
    /// IFRS 15 value of one outstanding point.
    pub liability_value: Decimal,
    /// Retired from the opening of this business date.
    pub retired_from: Option<chrono::NaiveDate>,
    /// Its points expire at the opening of this business date.
    pub points_expire_on: Option<chrono::NaiveDate>,
    /// From this instant the operator is the issuer of its points.
    pub points_taken_over_at: Option<Micros>,
}

/// A partner's prices as the config states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPrices {
    /// The partner.
    pub partner: String,
    /// Redemption rate.
    pub redemption_rate: Decimal,
    /// Issuance fee.
    pub issuance_fee: Decimal,
}

/// What the start-up sync brings into the database, in one transaction.
#[derive(Debug, Clone)]
pub struct Sync {
    /// The config's partners, registered (or updated).
    pub partners: Vec<PartnerRecord>,
    /// The config's prices (see [`from_config`]).
    pub prices: Vec<ConfigPrices>,
    /// Retired issuers whose lots expire at an instant.
    pub expiries: Vec<(String, Micros)>,
    /// Now.
    pub now: Micros,
    /// The next cycle's opening: where a changed config price takes effect.
    pub next_cycle_opens: Micros,
}

/// What the start-up sync did.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    /// Price versions added from the config.
    pub new_versions: Vec<PriceVersion>,
    /// Issuance rows given to transactions from before prices had history.
    pub backfilled: u64,
    /// Lots of retired issuers set to expire earlier.
    pub expiring_lots: u64,
}

/// The versions to add so that the book follows the config: a partner without any version gets
/// the config's prices since the beginning; a partner whose config prices differ from the last
/// version loaded from the config gets the changed ones from `next_cycle_opens` (a change never
/// lands mid-cycle), keeping the other price as it will stand then. Versions an operator set are
/// left alone: editing the config is a change, keeping it is not.
pub fn from_config(
    config: &[ConfigPrices],
    existing: &[PriceVersion],
    now: Micros,
    next_cycle_opens: Micros,
) -> Vec<PriceVersion> {
    let mut out = Vec::new();
    for p in config {
        let mine: Vec<&PriceVersion> = existing.iter().filter(|v| v.partner == p.partner).collect();
        let version =
            |effective_from, redemption_rate: Decimal, issuance_fee: Decimal| PriceVersion {
                partner: p.partner.clone(),
                effective_from,
                redemption_rate: redemption_rate.normalize(),
                issuance_fee: issuance_fee.normalize(),
                set_at: now,
                set_by: SET_BY_CONFIG.to_string(),
            };
        if mine.is_empty() {
            out.push(version(0, p.redemption_rate, p.issuance_fee));
            continue;
        }
        let last_from_config = mine
            .iter()
            .filter(|v| v.set_by == SET_BY_CONFIG)
            .max_by_key(|v| v.effective_from);
        let rate_changed = last_from_config.is_none_or(|v| v.redemption_rate != p.redemption_rate);
        let fee_changed = last_from_config.is_none_or(|v| v.issuance_fee != p.issuance_fee);
        if !rate_changed && !fee_changed {
            continue;
        }
        let sorted: Vec<PriceVersion> = {
            let mut v: Vec<PriceVersion> = mine.iter().map(|v| (*v).clone()).collect();
            v.sort_by_key(|v| v.effective_from);
            v
        };
        let then = in_force(&sorted, next_cycle_opens);
        out.push(version(
            next_cycle_opens,
            if rate_changed {
                p.redemption_rate
            } else {
                then.map_or(p.redemption_rate, |v| v.redemption_rate)
            },
            if fee_changed {
                p.issuance_fee
            } else {
                then.map_or(p.issuance_fee, |v| v.issuance_fee)
            },
        ));
    }
    out
}

/// Why a price version cannot be recorded.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// It would take effect too soon (or in the past).
    #[error(
        "a price change must take effect at least {} s ahead so that every daemon applies it at the same instant; {at} is too soon",
        MIN_LEAD / 1_000_000
    )]
    TooSoon {
        /// The instant asked for, RFC 3339.
        at: String,
    },
    /// Another version already takes effect at that instant.
    #[error("partner {partner} already has a different price version taking effect at {at}")]
    Conflict {
        /// The partner.
        partner: String,
        /// RFC 3339.
        at: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(from: Micros, rate: &str) -> PriceVersion {
        PriceVersion {
            partner: "p".into(),
            effective_from: from,
            redemption_rate: rate.parse().unwrap(),
            issuance_fee: Decimal::ZERO,
            set_at: 0,
            set_by: "config".into(),
        }
    }

    #[test]
    fn the_version_in_force_is_the_latest_that_has_taken_effect() {
        let book = PriceBook::new(vec![v(100, "0.02"), v(0, "0.01"), v(200, "0.03")]);
        assert_eq!(book.at("p", 0).unwrap().redemption_rate.to_string(), "0.01");
        assert_eq!(
            book.at("p", 99).unwrap().redemption_rate.to_string(),
            "0.01"
        );
        assert_eq!(
            book.at("p", 100).unwrap().redemption_rate.to_string(),
            "0.02"
        );
        assert_eq!(
            book.at("p", 10_000).unwrap().redemption_rate.to_string(),
            "0.03"
        );
        assert!(book.at("q", 100).is_none());
        let late = PriceBook::new(vec![v(100, "0.02")]);
        assert!(late.at("p", 99).is_none());
    }
}
