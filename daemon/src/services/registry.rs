//! The partner registry and price versions brought in line with the config at start: what the
//! config says of each partner, the versions it adds, the retirements it declares.

use crate::config::Config;
use crate::ledger::Micros;
use crate::prices::{ConfigPrices, PartnerRecord, PriceBook, Sync};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;

/// Retired partners of the config and the instant each retired (its `retired_from` day's
/// opening).
pub fn retirements(config: &Config) -> Result<BTreeMap<String, Micros>, StoreError> {
    retirements_where(config, |_| true)
}

/// Retired partners whose points the operator takes over as issuer, and from when.
pub fn takeovers(config: &Config) -> Result<BTreeMap<String, Micros>, StoreError> {
    retirements_where(config, |p| p.points_taken_over)
}

fn retirements_where(
    config: &Config,
    keep: impl Fn(&crate::config::Partner) -> bool,
) -> Result<BTreeMap<String, Micros>, StoreError> {
    let cycles = config.cycles();
    config
        .partners
        .values()
        .filter(|p| keep(p))
        .filter_map(|p| p.retired_from.map(|d| (p, d)))
        .map(|(p, d)| {
            let at = cycles.open(d).map_err(|e| {
                StoreError::Unavailable(format!("partners.{}.retired_from: {e}", p.id))
            })?;
            Ok((p.id.clone(), at))
        })
        .collect()
}

/// What the config says of each partner, as registry records.
pub fn records_of(config: &Config) -> Vec<PartnerRecord> {
    config
        .partners
        .values()
        .map(|p| PartnerRecord {
            id: p.id.clone(),
            name: p.name.clone(),
            kind: p.kind.clone(),
            account: p.account.clone(),
            liability_value: p.liability_value,
            retired_from: p.retired_from,
            points_expire_on: p.points_expire_on,
            points_taken_over_at: p
                .retired_from
                .filter(|_| p.points_taken_over)
                .and_then(|d| config.cycles().open(d).ok()),
        })
        .collect()
}

/// The config's prices.
pub fn config_prices(config: &Config) -> Vec<ConfigPrices> {
    config
        .partners
        .values()
        .map(|p| ConfigPrices {
            partner: p.id.clone(),
            redemption_rate: p.redemption_rate,
            issuance_fee: p.issuance_fee,
        })
        .collect()
}

/// Brings the database in line with the config at start, in one transaction: registry records,
/// new price versions, the issuance rows of transactions accepted before prices had history, and
/// the early expiry of retired partners' points. Returns the book.
pub async fn sync(
    store: &dyn Store,
    config: &Config,
    now: Micros,
) -> Result<PriceBook, StoreError> {
    let cycles = config.cycles();
    let next_cycle_opens = cycles
        .cycle_of(now)
        .and_then(|c| cycles.close(c))
        .map_err(|e| StoreError::Unavailable(format!("the clock is outside the calendar: {e}")))?;
    let mut expiries = Vec::new();
    for p in config.partners.values() {
        if let Some(day) = p.points_expire_on {
            let at = cycles.open(day).map_err(|e| {
                StoreError::Unavailable(format!("partners.{}.points_expire_on: {e}", p.id))
            })?;
            expiries.push((p.id.clone(), at));
        }
    }
    let done = store
        .sync_registry(&Sync {
            partners: records_of(config),
            prices: config_prices(config),
            expiries,
            now,
            next_cycle_opens,
        })
        .await?;
    for v in &done.new_versions {
        tracing::info!(partner = %v.partner, redemption_rate = %v.redemption_rate, issuance_fee = %v.issuance_fee,
            effective_from = %crate::clock::rfc3339(v.effective_from), "price version loaded from the config");
    }
    if done.backfilled > 0 {
        tracing::info!(
            transactions = done.backfilled,
            "issuance rows given to earns from before prices had history"
        );
    }
    if done.expiring_lots > 0 {
        tracing::info!(
            lots = done.expiring_lots,
            "retired partners' points set to expire"
        );
    }
    Ok(PriceBook::new(store.price_versions().await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prices::{PriceVersion, SET_BY_CONFIG, from_config};

    #[test]
    fn the_config_versions_only_what_it_changed() {
        let example = include_str!("../../../coalition.example.toml");
        let config = |text: &str| Config::parse(text, std::path::Path::new(".")).unwrap();
        let c = config_prices(&config(example));
        // A fresh database: every partner's config prices since the beginning.
        let first = from_config(&c, &[], 5, 100);
        assert_eq!(first.len(), 3);
        assert!(
            first
                .iter()
                .all(|v| v.effective_from == 0 && v.set_by == SET_BY_CONFIG)
        );
        // Unchanged config: nothing new, even after an operator's change.
        let mut existing = first.clone();
        let sky = |v: &PriceVersion| v.partner == "skyways";
        let operator = PriceVersion {
            partner: "skyways".into(),
            effective_from: 50,
            redemption_rate: "0.02".parse().unwrap(),
            issuance_fee: "0.001".parse().unwrap(),
            set_at: 10,
            set_by: "operator/ops".into(),
        };
        existing.push(operator);
        assert!(from_config(&c, &existing, 60, 100).is_empty());
        // The config's fee changes: a new version of the fee from the next opening, keeping the
        // operator's rate.
        let changed = config_prices(&config(
            &example.replace("issuance_fee = \"0.0005\"", "issuance_fee = \"0.0007\""),
        ));
        let new = from_config(&changed, &existing, 60, 100);
        assert_eq!(new.len(), 1);
        assert!(sky(&new[0]) && new[0].effective_from == 100);
        assert_eq!(
            (
                new[0].redemption_rate.to_string(),
                new[0].issuance_fee.to_string()
            ),
            ("0.02".to_string(), "0.0007".to_string())
        );
    }
}
