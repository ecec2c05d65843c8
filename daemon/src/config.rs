//! The daemon's configuration: one TOML file. Every problem found is reported with the key it
//! concerns, so that a wrong config stops start-up with a message a person can act on.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (names the key and line).
        message: String,
    },
    /// A key holds a value that is not allowed.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key, dotted (`partners[1].redemption_rate`).
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A business date of the config (`YYYY-MM-DD`), or what is wrong with it.
fn business_date(s: &str) -> Result<chrono::NaiveDate, String> {
    coalition_clearing::parse_business_date(s).ok_or_else(|| {
        format!(
            "{s:?} is not a business date like 2026-11-21 between {} and {}",
            coalition_clearing::FIRST_CYCLE,
            coalition_clearing::LAST_CYCLE
        )
    })
}

/// The file as written. Strings that need checking stay strings until [`Config::from_raw`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    coalition: String,
    listen: String,
    currency: String,
    time_zone: String,
    cutoff: String,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    points_expire_after_days: Option<i64>,
    tls: RawTls,
    database: RawDatabase,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    clearing: RawClearing,
    #[serde(default)]
    privacy: RawPrivacy,
    #[serde(default)]
    programme: Option<RawProgramme>,
    #[serde(default)]
    events: RawEvents,
    partners: Vec<RawPartner>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    retention_days: Option<u32>,
    webhook_pause_after_seconds: Option<u64>,
    webhook_max_backoff_seconds: Option<u64>,
    webhook_timeout_seconds: Option<u64>,
    webhook_ca_cert: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProgramme {
    tiers: Option<Vec<RawTier>>,
    tier_bonus_funder: Option<String>,
    qualifying_window_months: Option<u32>,
    review_months: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    threshold: i64,
    multiplier: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    retention_days: Option<u32>,
    retention_check_seconds: Option<u64>,
    access_log_days: Option<u32>,
    member_key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClearing {
    rounding: Option<String>,
    grace_seconds: Option<u64>,
    scheduler: Option<bool>,
    settlement_account: Option<RawAccount>,
    operator_account: Option<RawAccount>,
    first_cycle: Option<String>,
    max_catch_up_cycles: Option<u32>,
    unhealthy_after_seconds: Option<u64>,
    business_days: Option<Vec<String>>,
    holidays: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    iban: String,
    bic: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    #[serde(default)]
    crl: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    writer_lanes: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_batch: Option<usize>,
    default_hold_seconds: Option<u64>,
    max_hold_seconds: Option<u64>,
    queue_depth: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_pending_per_address: Option<usize>,
    max_pending_handshakes: Option<usize>,
    max_connections: Option<usize>,
    /// Test hook (undocumented on purpose): pause between writing a batch and committing it.
    pause_before_commit_ms: Option<u64>,
    /// Test hook (undocumented on purpose): panic inside the batch transaction for this member.
    panic_on_member: Option<String>,
    /// Bench hook (undocumented on purpose): commit batches without their hash-chain links, to
    /// measure what the chain costs. A ledger written so fails `audit --verify-chain`.
    bench_unchained: Option<bool>,
    /// Test hook (undocumented on purpose): this daemon does not give expired holds back on its
    /// own round (a batch, the clearing or a look at the metrics or the feed still does), so
    /// that a test can watch a hold read expired before anything has released it.
    holds_round_off: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStamps {
    every: u32,
    #[serde(default)]
    min_purchase: Option<String>,
    within_days: u32,
    #[serde(default)]
    reward_points: Option<i64>,
    #[serde(default)]
    voucher: Option<String>,
    #[serde(default)]
    voucher_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: String,
    name: String,
    kind: String,
    earn_rate: String,
    redemption_rate: String,
    #[serde(default)]
    issuance_fee: Option<String>,
    #[serde(default)]
    max_bonus_points: Option<i64>,
    #[serde(default)]
    stamps: Option<RawStamps>,
    rate_limit: RawRateLimit,
    #[serde(default)]
    iban: Option<String>,
    #[serde(default)]
    bic: Option<String>,
    #[serde(default)]
    liability_value: Option<String>,
    #[serde(default)]
    retired_from: Option<String>,
    #[serde(default)]
    points_expire_on: Option<String>,
    #[serde(default)]
    points_taken_over: Option<bool>,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    webhook_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: u32,
}

/// A partner business as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Partner {
    /// Stable id, as in its certificate's SAN (`[a-z0-9-]`, 1..=32).
    pub id: String,
    /// Display name.
    pub name: String,
    /// airline, supermarket, restaurant, …
    pub kind: String,
    /// Points granted per one unit of money spent (before tier multipliers).
    pub earn_rate: Decimal,
    /// Money per point paid to this partner for each point burned here.
    pub redemption_rate: Decimal,
    /// Money per point this partner pays the operator when it issues points.
    pub issuance_fee: Decimal,
    /// Largest explicit bonus grant.
    pub max_bonus_points: i64,
    /// Its stamp card rule ("every Nth purchase…"), if it runs one.
    pub stamps: Option<crate::programme::StampRule>,
    /// Requests per second allowed.
    pub rate_per_second: u32,
    /// Burst allowed above the rate.
    pub burst: u32,
    /// Where payouts to this partner go.
    pub account: Option<coalition_clearing::export::Account>,
    /// IFRS 15 value of one of its outstanding points (liability report); default its
    /// redemption rate.
    pub liability_value: Decimal,
    /// Retired from the opening of this business date: it no longer earns or burns, and still
    /// pays and receives in settlements.
    pub retired_from: Option<chrono::NaiveDate>,
    /// Its points still held by members expire at the opening of this business date.
    pub points_expire_on: Option<chrono::NaiveDate>,
    /// The operator takes its points over as issuer when it retires.
    pub points_taken_over: bool,
    /// Where its events are pushed, and the secret they are signed with (`webhook_url`,
    /// `webhook_secret`); the operator API can change both without a restart.
    pub webhook: Option<Webhook>,
}

/// A partner's webhook as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// https://… (http:// only to a loopback address).
    pub url: String,
    /// `whsec_` and base64 of the key (Standard Webhooks).
    pub secret: String,
}

/// Partners' event feeds and their webhooks (`[events]`).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Days an event is kept (`retention_days`, default 30).
    pub retention_days: u32,
    /// A webhook failing this long is paused (`webhook_pause_after_seconds`, default 3600).
    pub pause_after: std::time::Duration,
    /// The longest wait between two attempts of a failing webhook (`webhook_max_backoff_seconds`,
    /// default 60).
    pub max_backoff: std::time::Duration,
    /// How long a delivery may take (`webhook_timeout_seconds`, default 10).
    pub timeout: std::time::Duration,
    /// A CA, besides the web's, that receivers' certificates may chain to (`webhook_ca_cert`).
    pub ca_cert: Option<PathBuf>,
}

/// Whether `url` is one a webhook may post to: https, or http to a loopback address.
pub fn webhook_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "{url:?}: use https:// (http:// only to a loopback address, for a receiver on this host)"
            ));
        }
        r
    } else {
        return Err(format!("{url:?}: use an https:// URL"));
    };
    if rest.is_empty()
        || rest.starts_with('/')
        || url.len() > 2048
        || url.chars().any(char::is_whitespace)
    {
        return Err(format!("{url:?} is not a URL with a host"));
    }
    Ok(())
}

/// Whether `secret` is a Standard Webhooks signing secret: `whsec_` and base64 of 24..=64 bytes.
pub fn webhook_secret(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or_else(|| {
            "use \"whsec_\" and the base64 of the key (Standard Webhooks)".to_string()
        })?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes: use 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// How and when cycles are cleared.
#[derive(Debug, Clone)]
pub struct ClearingConfig {
    /// Rounding of net positions (`half_away_from_zero`, `half_even`, `down`).
    pub rounding: coalition_clearing::Rounding,
    /// Time after a cut-off before the scheduler clears the cycle.
    pub grace: std::time::Duration,
    /// Whether this daemon clears cycles by itself.
    pub scheduler: bool,
    /// The coalition's settlement account (debtor of payouts).
    pub settlement_account: Option<coalition_clearing::export::Account>,
    /// The operator's account (receives issuance fees).
    pub operator_account: Option<coalition_clearing::export::Account>,
    /// The coalition's first business day (`clearing.first_cycle`); without it, the cycle of the
    /// first accepted transaction.
    pub first_cycle: Option<chrono::NaiveDate>,
    /// The most cycles the scheduler clears by itself in one catch-up; beyond, it waits for an
    /// operator to confirm (`clearing.max_catch_up_cycles`, default 400).
    pub max_catch_up_cycles: u32,
    /// How long scheduled clearing may keep failing before the finance service's health turns
    /// NOT_SERVING (`clearing.unhealthy_after_seconds`, default 600).
    pub unhealthy_after: std::time::Duration,
    /// Days of the week banks execute payments (`clearing.business_days`, default Mon–Fri).
    pub business_days: Vec<chrono::Weekday>,
    /// Dates banks do not execute payments (`clearing.holidays`).
    pub holidays: Vec<chrono::NaiveDate>,
}

impl ClearingConfig {
    /// The first banking day after the cycle `after` and not before `earliest`: the requested
    /// execution date of its payouts and the due date of its pay-ins.
    pub fn next_business_day(
        &self,
        after: chrono::NaiveDate,
        earliest: chrono::NaiveDate,
    ) -> Option<chrono::NaiveDate> {
        let mut d = after.succ_opt()?.max(earliest);
        // Bounded: a year of holidays cannot hide every day of a working week.
        for _ in 0..400 {
            use chrono::Datelike;
            if self.business_days.contains(&d.weekday()) && !self.holidays.contains(&d) {
                return Some(d);
            }
            d = d.succ_opt()?;
        }
        None
    }
}

/// A settlement currency: its ISO 4217 code and minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    /// ISO 4217 alphabetic code.
    pub code: &'static str,
    /// Digits after the decimal point (0 for JPY, 2 for EUR, 3 for BHD).
    pub minor_units: u32,
}

/// ISO 4217 codes the daemon knows, with their minor units. Kept explicit: the exponent decides
/// how settlements round, so it must never be guessed.
const CURRENCIES: &[(&str, u32)] = &[
    ("EUR", 2),
    ("USD", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("CZK", 2),
    ("HUF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("NZD", 2),
    ("SGD", 2),
    ("HKD", 2),
    ("CNY", 2),
    ("INR", 2),
    ("BRL", 2),
    ("MXN", 2),
    ("ZAR", 2),
    ("AED", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("ISK", 0),
    ("CLP", 0),
    ("VND", 0),
    ("BHD", 3),
    ("KWD", 3),
    ("OMR", 3),
    ("JOD", 3),
    ("TND", 3),
];

impl Currency {
    /// Looks an ISO 4217 code up.
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, minor_units)| Currency { code, minor_units })
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The coalition's name; the trust domain of identity URIs (`spiffe://<coalition>/…`).
    pub coalition: String,
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The settlement currency.
    pub currency: Currency,
    /// The coalition's time zone (IANA name), for cycles.
    pub time_zone: chrono_tz::Tz,
    /// The daily cut-off, minutes after local midnight.
    pub cutoff_minutes: u32,
    /// Days after which earned points expire; `None` never.
    pub points_expire_after_days: Option<i64>,
    /// CA that signs client certificates.
    pub ca_cert: PathBuf,
    /// Server certificate chain.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// CRL of the client CA (reloaded with the certificates on SIGHUP).
    pub crl: Option<PathBuf>,
    /// Where `/metrics` (Prometheus text format) is served; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Database URL: `sqlite://path` (or a bare path) or `postgres://…`.
    pub database_url: String,
    /// Largest number of calls applied in one commit.
    pub max_batch: usize,
    /// Writers of one daemon on PostgreSQL, each with its own connection (`database.writer_lanes`,
    /// default 4); a SQLite file has one.
    pub writer_lanes: usize,
    /// How long a hold at the till runs when the call does not say (`limits.default_hold_seconds`,
    /// default 900).
    pub default_hold_seconds: u64,
    /// The longest hold a call may ask for (`limits.max_hold_seconds`, default 86,400).
    pub max_hold_seconds: u64,
    /// Calls queued for the writer before callers wait.
    pub queue_depth: usize,
    /// Time a client has to finish the TLS handshake (`limits.handshake_timeout_ms`, default 5 s).
    pub handshake_timeout_ms: u64,
    /// Connections in their handshake from one address (`limits.max_pending_per_address`,
    /// default 64).
    pub max_pending_per_address: Option<usize>,
    /// Connections in their handshake in total (`limits.max_pending_handshakes`; default a
    /// quarter of the open file limit left after the database and files).
    pub max_pending_handshakes: Option<usize>,
    /// Connections past the handshake (`limits.max_connections`; default the rest).
    pub max_connections: Option<usize>,
    /// Test hook: pause between writing a batch and committing it (`limits.pause_before_commit_ms`).
    pub pause_before_commit: Option<std::time::Duration>,
    /// Test hook: panic inside the batch transaction for this member (`limits.panic_on_member`).
    pub panic_on_member: Option<&'static str>,
    /// Bench hook: batches commit without their hash-chain links (`limits.bench_unchained`).
    pub bench_unchained: bool,
    /// Test hook: no round gives expired holds back on this daemon (`limits.holds_round_off`).
    pub holds_round_off: bool,
    /// Clearing settings.
    pub clearing: ClearingConfig,
    /// Days after a member's last transaction before its id is replaced by a pseudonym
    /// (`privacy.retention_days`, default 1095: three years).
    pub retention_days: u32,
    /// Days the access log keeps an entry (`privacy.access_log_days`, default 365).
    pub access_log_days: u32,
    /// Days a partner's event is kept (`events.retention_days`, default 30).
    pub events_retention_days: u32,
    /// Partners' event feeds and webhooks.
    pub events: EventsConfig,
    /// How often the daemon looks for members past retention (`privacy.retention_check_seconds`,
    /// default 3600).
    pub retention_check: std::time::Duration,
    /// The key of members' pseudonyms when forgotten and of their references in logs
    /// (`privacy.member_key`); without it `ForgetMember` is refused.
    pub member_key: Option<crate::privacy::MemberKey>,
    /// Partners by id.
    pub partners: BTreeMap<String, Partner>,
    /// The tier ladder, when the coalition runs tiers (`[programme]`).
    pub ladder: Option<crate::programme::Ladder>,
}

fn ladder(raw: Option<RawProgramme>) -> Result<Option<crate::programme::Ladder>, ConfigError> {
    use crate::programme::{Ladder, MAX_MULTIPLIER, Tier};
    let Some(raw) = raw else { return Ok(None) };
    let mut l = Ladder::default_ladder();
    if let Some(tiers) = raw.tiers {
        l.tiers = Vec::new();
        for (i, t) in tiers.into_iter().enumerate() {
            let key = |f: &str| format!("programme.tiers[{i}].{f}");
            if !valid_partner_id(&t.name) {
                return Err(invalid(
                    key("name"),
                    "use 1..=32 lowercase letters, digits or '-'",
                ));
            }
            let multiplier = decimal(key("multiplier"), &t.multiplier)?;
            if multiplier < Decimal::ONE || multiplier > Decimal::from(MAX_MULTIPLIER) {
                return Err(invalid(
                    key("multiplier"),
                    format!("use 1..={MAX_MULTIPLIER} (1: no bonus)"),
                ));
            }
            let previous = l.tiers.last().map(|p: &Tier| p.threshold);
            let ok = match previous {
                None => t.threshold == 0,
                Some(p) => {
                    t.threshold > p && t.threshold <= crate::ledger::MAX_POINTS_PER_TRANSACTION
                }
            };
            if !ok {
                return Err(invalid(
                    key("threshold"),
                    "the first tier starts at 0 and each next one higher",
                ));
            }
            if l.tiers.iter().any(|x| x.name == t.name) {
                return Err(invalid(
                    key("name"),
                    format!("tier {:?} is named twice", t.name),
                ));
            }
            l.tiers.push(Tier {
                name: t.name,
                threshold: t.threshold,
                multiplier,
            });
        }
        if l.tiers.is_empty() {
            return Err(invalid("programme.tiers", "name at least one tier"));
        }
    }
    if let Some(f) = raw.tier_bonus_funder {
        l.funder = crate::ledger::Funder::parse(&f).ok_or_else(|| {
            invalid(
                "programme.tier_bonus_funder",
                format!("{f:?} is neither \"partner\" nor \"operator\""),
            )
        })?;
    }
    for (key, v, slot) in [
        (
            "programme.qualifying_window_months",
            raw.qualifying_window_months,
            &mut l.window_months,
        ),
        (
            "programme.review_months",
            raw.review_months,
            &mut l.review_months,
        ),
    ] {
        if let Some(v) = v {
            if !(1..=120).contains(&v) {
                return Err(invalid(key, "use 1..=120 months"));
            }
            *slot = v;
        }
    }
    Ok(Some(l))
}

fn account(
    key: &str,
    name: &str,
    iban: &str,
    bic: &str,
) -> Result<coalition_clearing::export::Account, ConfigError> {
    // ASCII first: the checks below slice bytes, which must not split a character.
    let iban_ok = iban.is_ascii()
        && iban.len() >= 5
        && iban.len() <= 34
        && iban[..2].bytes().all(|b| b.is_ascii_uppercase())
        && iban[2..4].bytes().all(|b| b.is_ascii_digit())
        && iban[4..].bytes().all(|b| b.is_ascii_alphanumeric());
    if !iban_ok {
        return Err(invalid(
            format!("{key}.iban"),
            format!("{iban:?} is not an IBAN"),
        ));
    }
    let bic_ok = bic.is_ascii()
        && (bic.len() == 8 || bic.len() == 11)
        && bic[..6].bytes().all(|b| b.is_ascii_uppercase())
        && bic[6..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !bic_ok {
        return Err(invalid(
            format!("{key}.bic"),
            format!("{bic:?} is not a BIC (8 or 11 characters)"),
        ));
    }
    // pain.001 carries the first 140 characters; the writer cuts, so any sane name is accepted.
    if name.trim().is_empty() || name.chars().count() > 1000 {
        return Err(invalid(format!("{key}.name"), "use 1..=1000 characters"));
    }
    Ok(coalition_clearing::export::Account {
        name: name.into(),
        iban: iban.into(),
        bic: bic.into(),
    })
}

/// Whether `id` is a well-formed partner or member-facing id.
pub fn valid_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Largest rate, fee or earn rate per point (or per unit of money) the config accepts.
pub const MAX_RATE: i64 = 1000;

/// A rate typed by a person (an operator's price change): the same rules as the config's,
/// with the reason in the error text.
pub fn rate(s: &str) -> Result<Decimal, String> {
    decimal(String::new(), s).map_err(|e| match e {
        ConfigError::Invalid { message, .. } => message,
        other => other.to_string(),
    })
}

/// A rate: a plain decimal, not negative, below [`MAX_RATE`], with at most
/// [`coalition_clearing::MAX_RATE_DECIMALS`] decimals, so that every amount a settlement
/// computes from it is exact (Decimal would round silently past 28 digits).
fn decimal(key: String, s: &str) -> Result<Decimal, ConfigError> {
    let d = Decimal::from_str(s)
        .map_err(|_| invalid(&key, format!("{s:?} is not a decimal number")))?;
    if d.is_sign_negative() {
        return Err(invalid(key, format!("{s} must not be negative")));
    }
    if d.scale() > coalition_clearing::MAX_RATE_DECIMALS {
        return Err(invalid(
            key,
            format!(
                "{s} has {} decimals; use at most {}",
                d.scale(),
                coalition_clearing::MAX_RATE_DECIMALS
            ),
        ));
    }
    if d >= Decimal::from(MAX_RATE) {
        return Err(invalid(
            key,
            format!("{s} is too large; use less than {MAX_RATE}"),
        ));
    }
    Ok(d)
}

impl Config {
    /// Each configured partner's stamp card rule.
    pub fn stamp_rules(&self) -> BTreeMap<String, crate::programme::StampRule> {
        self.partners
            .values()
            .filter_map(|p| Some((p.id.clone(), p.stamps.clone()?)))
            .collect()
    }

    /// Each configured partner's kind.
    pub fn partner_kinds(&self) -> BTreeMap<String, String> {
        self.partners
            .values()
            .map(|p| (p.id.clone(), p.kind.clone()))
            .collect()
    }

    /// The cycle calendar of this coalition.
    pub fn cycles(&self) -> coalition_clearing::Cycles {
        // The cut-off was validated at load (`parse_hhmm` gives < 24 h); fall back to midnight
        // rather than panic should that ever change.
        coalition_clearing::Cycles::new(self.time_zone, self.cutoff_minutes)
            .or_else(|_| coalition_clearing::Cycles::new(self.time_zone, 0))
            .unwrap_or_else(|_| unreachable!("midnight is a cut-off"))
    }

    /// The clearing rules every run and every audit of a settlement uses.
    pub fn clearing_rules(&self) -> coalition_clearing::Rules {
        coalition_clearing::Rules {
            cycles: self.cycles(),
            currency: self.currency.code.to_string(),
            minor_units: self.currency.minor_units,
            rounding: self.clearing.rounding,
            first_cycle: self.clearing.first_cycle,
        }
    }

    /// Reads and validates a config file. Relative paths in it are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        Config::from_raw(raw, base)
    }

    fn from_raw(raw: Raw, base: &Path) -> Result<Config, ConfigError> {
        if !valid_partner_id(&raw.coalition) {
            return Err(invalid(
                "coalition",
                "use 1..=32 lowercase letters, digits or '-'",
            ));
        }
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:7443", raw.listen),
            )
        })?;
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            Some("") | Some("off") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!("{a:?} is not an address like 127.0.0.1:9464 (or \"off\")"),
                )
            })?),
        };
        let currency = Currency::from_code(&raw.currency).ok_or_else(|| {
            invalid(
                "currency",
                format!(
                    "{:?} is not an ISO 4217 code this daemon knows (e.g. EUR, JPY, BHD)",
                    raw.currency
                ),
            )
        })?;
        let time_zone: chrono_tz::Tz = raw.time_zone.parse().map_err(|_| {
            invalid(
                "time_zone",
                format!(
                    "{:?} is not an IANA time zone like Europe/Amsterdam",
                    raw.time_zone
                ),
            )
        })?;
        let cutoff_minutes = parse_hhmm(&raw.cutoff).ok_or_else(|| {
            invalid(
                "cutoff",
                format!("{:?} is not a time of day HH:MM", raw.cutoff),
            )
        })?;
        if let Some(d) = raw.points_expire_after_days
            && !(1..=36_500).contains(&d)
        {
            return Err(invalid(
                "points_expire_after_days",
                "use 1..=36500 days, or leave it out for never",
            ));
        }
        if raw.database.url.trim().is_empty() {
            return Err(invalid("database.url", "must not be empty"));
        }
        let database_url = resolve_db_url(&raw.database.url, base);
        let max_batch = raw.limits.max_batch.unwrap_or(1024);
        if !(1..=8192).contains(&max_batch) {
            return Err(invalid("limits.max_batch", "use 1..=8192"));
        }
        let max_hold_seconds = raw.limits.max_hold_seconds.unwrap_or(86_400);
        if !(1..=31 * 86_400).contains(&max_hold_seconds) {
            return Err(invalid(
                "limits.max_hold_seconds",
                "use 1..=2678400 (31 days)",
            ));
        }
        let default_hold_seconds = raw.limits.default_hold_seconds.unwrap_or(900);
        if !(1..=max_hold_seconds).contains(&default_hold_seconds) {
            return Err(invalid(
                "limits.default_hold_seconds",
                format!("use 1..={max_hold_seconds} (limits.max_hold_seconds)"),
            ));
        }
        let writer_lanes = raw.database.writer_lanes.unwrap_or(4);
        if !(1..=64).contains(&writer_lanes) {
            return Err(invalid("database.writer_lanes", "use 1..=64"));
        }
        let queue_depth = raw.limits.queue_depth.unwrap_or(16_384);
        if !(1..=1_000_000).contains(&queue_depth) {
            return Err(invalid("limits.queue_depth", "use 1..=1000000"));
        }
        let handshake_timeout_ms = raw.limits.handshake_timeout_ms.unwrap_or(5_000);
        if !(100..=60_000).contains(&handshake_timeout_ms) {
            return Err(invalid("limits.handshake_timeout_ms", "use 100..=60000"));
        }
        for (key, v) in [
            (
                "limits.max_pending_per_address",
                raw.limits.max_pending_per_address,
            ),
            (
                "limits.max_pending_handshakes",
                raw.limits.max_pending_handshakes,
            ),
            ("limits.max_connections", raw.limits.max_connections),
        ] {
            if let Some(n) = v
                && !(1..=1_000_000).contains(&n)
            {
                return Err(invalid(key, "use 1..=1000000"));
            }
        }
        if raw.partners.is_empty() {
            return Err(invalid("partners", "configure at least one partner"));
        }
        let mut partners = BTreeMap::new();
        for (i, p) in raw.partners.into_iter().enumerate() {
            let key = |k: &str| format!("partners[{i}].{k}");
            if !valid_partner_id(&p.id) {
                return Err(invalid(
                    key("id"),
                    format!("{:?}: use 1..=32 lowercase letters, digits or '-'", p.id),
                ));
            }
            if p.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            let earn_rate = decimal(key("earn_rate"), &p.earn_rate)?;
            let redemption_rate = decimal(key("redemption_rate"), &p.redemption_rate)?;
            let issuance_fee = match &p.issuance_fee {
                Some(s) => decimal(key("issuance_fee"), s)?,
                None => Decimal::ZERO,
            };
            let max_bonus_points = p.max_bonus_points.unwrap_or(100_000);
            if !(0..=crate::ledger::MAX_POINTS_PER_TRANSACTION).contains(&max_bonus_points) {
                return Err(invalid(
                    key("max_bonus_points"),
                    format!(
                        "use 0..={} points",
                        crate::ledger::MAX_POINTS_PER_TRANSACTION
                    ),
                ));
            }
            if p.rate_limit.per_second == 0 {
                return Err(invalid(key("rate_limit.per_second"), "must be at least 1"));
            }
            if p.rate_limit.burst == 0 {
                return Err(invalid(key("rate_limit.burst"), "must be at least 1"));
            }
            if p.id == coalition_clearing::OPERATOR {
                return Err(invalid(
                    key("id"),
                    "\"operator\" is reserved for the coalition operator",
                ));
            }
            let partner_account = match (&p.iban, &p.bic) {
                (Some(iban), Some(bic)) => {
                    Some(account(&format!("partners[{i}]"), &p.name, iban, bic)?)
                }
                (None, None) => None,
                _ => return Err(invalid(key("iban"), "give both iban and bic, or neither")),
            };
            let date = |k: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|s| business_date(s).map_err(|e| invalid(key(k), e)))
                    .transpose()
            };
            let retired_from = date("retired_from", &p.retired_from)?;
            let points_expire_on = date("points_expire_on", &p.points_expire_on)?;
            if points_expire_on.is_some() && retired_from.is_none() {
                return Err(invalid(
                    key("points_expire_on"),
                    "only a retired partner's points expire early: set retired_from too",
                ));
            }
            let points_taken_over = p.points_taken_over.unwrap_or(false);
            if points_taken_over && retired_from.is_none() {
                return Err(invalid(
                    key("points_taken_over"),
                    "only a retired partner's points are taken over: set retired_from too",
                ));
            }
            if points_taken_over && points_expire_on.is_some() {
                return Err(invalid(
                    key("points_taken_over"),
                    "choose one rule for a retired partner's points: points_expire_on or points_taken_over",
                ));
            }
            let liability_value = match &p.liability_value {
                Some(s) => decimal(key("liability_value"), s)?,
                None => redemption_rate,
            };
            let stamps = match p.stamps {
                None => None,
                Some(st) => {
                    use crate::programme::{StampReward, StampRule};
                    if !(2..=1000).contains(&st.every) {
                        return Err(invalid(key("stamps.every"), "use 2..=1000 purchases"));
                    }
                    if !(1..=3650).contains(&st.within_days) {
                        return Err(invalid(key("stamps.within_days"), "use 1..=3650 days"));
                    }
                    let min_amount = match &st.min_purchase {
                        Some(a) => decimal(key("stamps.min_purchase"), a)?,
                        None => Decimal::ZERO,
                    };
                    let reward = match (st.reward_points, st.voucher) {
                        (Some(pts), None)
                            if (1..=crate::ledger::MAX_POINTS_PER_TRANSACTION).contains(&pts) =>
                        {
                            StampReward::Points(pts)
                        }
                        (None, Some(what))
                            if !what.trim().is_empty() && what.chars().count() <= 200 =>
                        {
                            StampReward::Voucher {
                                what,
                                days: st.voucher_days.unwrap_or(90).clamp(1, 3650),
                            }
                        }
                        _ => {
                            return Err(invalid(
                                key("stamps"),
                                "give either reward_points (1 or more) or voucher (what it is worth, 1..=200 characters)",
                            ));
                        }
                    };
                    Some(StampRule {
                        every: st.every,
                        min_amount,
                        within_days: st.within_days,
                        reward,
                    })
                }
            };
            let webhook = match (p.webhook_url, p.webhook_secret) {
                (None, None) => None,
                (Some(url), Some(secret)) => {
                    webhook_url(&url).map_err(|m| invalid(key("webhook_url"), m))?;
                    webhook_secret(&secret).map_err(|m| invalid(key("webhook_secret"), m))?;
                    Some(Webhook { url, secret })
                }
                _ => {
                    return Err(invalid(
                        key("webhook_url"),
                        "give both webhook_url and webhook_secret, or neither",
                    ));
                }
            };
            let partner = Partner {
                webhook,
                stamps,
                id: p.id.clone(),
                name: p.name,
                kind: p.kind,
                earn_rate,
                redemption_rate,
                issuance_fee,
                max_bonus_points,
                rate_per_second: p.rate_limit.per_second,
                burst: p.rate_limit.burst,
                account: partner_account,
                liability_value,
                retired_from,
                points_expire_on,
                points_taken_over,
            };
            if partners.insert(p.id.clone(), partner).is_some() {
                return Err(invalid(
                    key("id"),
                    format!("partner {:?} is configured twice", p.id),
                ));
            }
        }
        let ladder = ladder(raw.programme)?;
        Ok(Config {
            ladder,
            coalition: raw.coalition,
            listen,
            currency,
            time_zone,
            cutoff_minutes,
            points_expire_after_days: raw.points_expire_after_days,
            ca_cert: base.join(raw.tls.ca_cert),
            server_cert: base.join(raw.tls.server_cert),
            server_key: base.join(raw.tls.server_key),
            crl: raw.tls.crl.map(|c| base.join(c)),
            metrics_listen,
            database_url,
            max_batch,
            writer_lanes,
            default_hold_seconds,
            max_hold_seconds,
            queue_depth,
            handshake_timeout_ms,
            max_pending_per_address: raw.limits.max_pending_per_address,
            max_pending_handshakes: raw.limits.max_pending_handshakes,
            max_connections: raw.limits.max_connections,
            pause_before_commit: raw
                .limits
                .pause_before_commit_ms
                .map(std::time::Duration::from_millis),
            bench_unchained: raw.limits.bench_unchained.unwrap_or(false),
            holds_round_off: raw.limits.holds_round_off.unwrap_or(false),
            // Leaked once per config load: a test hook, never set in production.
            panic_on_member: raw
                .limits
                .panic_on_member
                .map(|m| &*Box::leak(m.into_boxed_str())),
            clearing: ClearingConfig {
                rounding: match raw
                    .clearing
                    .rounding
                    .as_deref()
                    .unwrap_or("half_away_from_zero")
                {
                    "half_away_from_zero" => coalition_clearing::Rounding::HalfAwayFromZero,
                    "half_even" => coalition_clearing::Rounding::HalfEven,
                    "down" => coalition_clearing::Rounding::Down,
                    other => {
                        return Err(invalid(
                            "clearing.rounding",
                            format!("{other:?}: use half_away_from_zero, half_even or down"),
                        ));
                    }
                },
                grace: std::time::Duration::from_secs(raw.clearing.grace_seconds.unwrap_or(300)),
                scheduler: raw.clearing.scheduler.unwrap_or(true),
                settlement_account: raw
                    .clearing
                    .settlement_account
                    .map(|a| account("clearing.settlement_account", &a.name, &a.iban, &a.bic))
                    .transpose()?,
                operator_account: raw
                    .clearing
                    .operator_account
                    .map(|a| account("clearing.operator_account", &a.name, &a.iban, &a.bic))
                    .transpose()?,
                first_cycle: raw
                    .clearing
                    .first_cycle
                    .as_deref()
                    .map(|s| business_date(s).map_err(|e| invalid("clearing.first_cycle", e)))
                    .transpose()?,
                max_catch_up_cycles: match raw.clearing.max_catch_up_cycles.unwrap_or(400) {
                    n @ 1..=100_000 => n,
                    _ => return Err(invalid("clearing.max_catch_up_cycles", "use 1..=100000")),
                },
                unhealthy_after: match raw.clearing.unhealthy_after_seconds.unwrap_or(600) {
                    s @ 1..=604_800 => std::time::Duration::from_secs(s),
                    _ => {
                        return Err(invalid(
                            "clearing.unhealthy_after_seconds",
                            "use 1..=604800 (up to a week)",
                        ));
                    }
                },
                business_days: match &raw.clearing.business_days {
                    None => {
                        use chrono::Weekday::*;
                        vec![Mon, Tue, Wed, Thu, Fri]
                    }
                    Some(days) => {
                        let mut out = Vec::new();
                        for d in days {
                            out.push(d.parse::<chrono::Weekday>().map_err(|_| {
                                invalid(
                                    "clearing.business_days",
                                    format!("{d:?} is not a day of the week (mon, tue, …)"),
                                )
                            })?);
                        }
                        if out.is_empty() {
                            return Err(invalid(
                                "clearing.business_days",
                                "name at least one day banks work",
                            ));
                        }
                        out
                    }
                },
                holidays: raw
                    .clearing
                    .holidays
                    .iter()
                    .flatten()
                    .map(|s| business_date(s).map_err(|e| invalid("clearing.holidays", e)))
                    .collect::<Result<_, _>>()?,
            },
            retention_days: match raw.privacy.retention_days.unwrap_or(1095) {
                d @ 1..=36_500 => d,
                _ => return Err(invalid("privacy.retention_days", "use 1..=36500 days")),
            },
            access_log_days: match raw.privacy.access_log_days.unwrap_or(365) {
                d @ 1..=36_500 => d,
                _ => return Err(invalid("privacy.access_log_days", "use 1..=36500 days")),
            },
            events_retention_days: match raw.events.retention_days.unwrap_or(30) {
                d @ 1..=3650 => d,
                _ => return Err(invalid("events.retention_days", "use 1..=3650 days")),
            },
            events: EventsConfig {
                retention_days: raw.events.retention_days.unwrap_or(30),
                pause_after: std::time::Duration::from_secs(
                    match raw.events.webhook_pause_after_seconds.unwrap_or(3600) {
                        s @ 10..=604_800 => s,
                        _ => {
                            return Err(invalid(
                                "events.webhook_pause_after_seconds",
                                "use 10..=604800 seconds",
                            ));
                        }
                    },
                ),
                max_backoff: std::time::Duration::from_secs(
                    match raw.events.webhook_max_backoff_seconds.unwrap_or(60) {
                        s @ 1..=3600 => s,
                        _ => {
                            return Err(invalid(
                                "events.webhook_max_backoff_seconds",
                                "use 1..=3600 seconds",
                            ));
                        }
                    },
                ),
                timeout: std::time::Duration::from_secs(
                    match raw.events.webhook_timeout_seconds.unwrap_or(10) {
                        s @ 1..=120 => s,
                        _ => {
                            return Err(invalid(
                                "events.webhook_timeout_seconds",
                                "use 1..=120 seconds",
                            ));
                        }
                    },
                ),
                ca_cert: raw.events.webhook_ca_cert.map(|p| base.join(p)),
            },
            retention_check: std::time::Duration::from_secs(
                match raw.privacy.retention_check_seconds.unwrap_or(3600) {
                    s @ 1..=86_400 => s,
                    _ => {
                        return Err(invalid(
                            "privacy.retention_check_seconds",
                            "use 1..=86400 seconds",
                        ));
                    }
                },
            ),
            member_key: match raw.privacy.member_key.as_deref() {
                None => None,
                Some(k) => Some(crate::privacy::MemberKey::from_secret(k).ok_or_else(|| {
                    invalid(
                        "privacy.member_key",
                        "use at least 32 characters of secret (e.g. `openssl rand -hex 32`)",
                    )
                })?),
            },
            partners,
        })
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

/// SQLite paths in the URL are taken relative to the config file's folder; PostgreSQL URLs pass.
fn resolve_db_url(url: &str, base: &Path) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return url.to_string();
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let p = Path::new(path);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    format!("sqlite://{}", full.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../coalition.example.toml");

    #[test]
    fn example_config_is_valid() {
        let c = Config::parse(GOOD, Path::new("/etc/coalition")).unwrap();
        assert_eq!(c.currency.code, "EUR");
        assert_eq!(c.partners.len(), 3);
        assert!(c.database_url.starts_with("sqlite:///etc/coalition/"));
    }

    #[test]
    fn hold_limits_have_defaults_and_the_default_fits_the_maximum() {
        let c = Config::parse(GOOD, Path::new("/etc/coalition")).unwrap();
        assert_eq!((c.default_hold_seconds, c.max_hold_seconds), (900, 86_400));
        let bare = GOOD
            .replace("default_hold_seconds = 900\n", "")
            .replace("max_hold_seconds = 86400\n", "");
        let c = Config::parse(&bare, Path::new("/etc/coalition")).unwrap();
        assert_eq!((c.default_hold_seconds, c.max_hold_seconds), (900, 86_400));
        let over = GOOD.replace("default_hold_seconds = 900", "default_hold_seconds = 90000");
        let e = Config::parse(&over, Path::new("/etc/coalition")).unwrap_err();
        assert!(e.to_string().contains("limits.default_hold_seconds"), "{e}");
        let zero = GOOD.replace("max_hold_seconds = 86400", "max_hold_seconds = 0");
        assert!(Config::parse(&zero, Path::new("/etc/coalition")).is_err());
    }

    #[test]
    fn payments_execute_on_the_next_banking_day() {
        let c = Config::parse(GOOD, Path::new("/etc/coalition")).unwrap();
        let d = |s: &str| s.parse::<chrono::NaiveDate>().unwrap();
        let next = |after: &str, earliest: &str| {
            c.clearing
                .next_business_day(d(after), d(earliest))
                .unwrap()
                .to_string()
        };
        assert_eq!(next("2026-11-30", "2026-12-01"), "2026-12-01"); // Mon → Tue
        assert_eq!(next("2026-12-04", "2026-12-05"), "2026-12-07"); // Fri → Mon
        assert_eq!(next("2026-12-24", "2026-12-25"), "2026-12-28"); // Christmas, Sat, Sun
        assert_eq!(next("2026-12-01", "2026-12-09"), "2026-12-09"); // not before the file
        let text = GOOD.replace(
            "business_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
            "business_days = [\"Sunday\", \"mon\"]",
        );
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(
            c.clearing
                .next_business_day(d("2026-12-01"), d("2026-12-01")),
            Some(d("2026-12-06"))
        );
        let bad = GOOD.replace("\"wed\"", "\"someday\"");
        let e = Config::parse(&bad, Path::new(".")).unwrap_err().to_string();
        assert!(
            e.contains("clearing.business_days") && e.contains("someday"),
            "{e}"
        );
        let early = GOOD.replace(
            "# points_expire_on = \"2027-12-31\"",
            "points_expire_on = \"2027-12-31\"",
        );
        let e = Config::parse(&early, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retired_from"), "{e}");
        let both = GOOD.replace(
            "# retired_from = \"2027-06-30\"\n# points_expire_on = \"2027-12-31\"",
            "retired_from = \"2027-06-30\"\npoints_expire_on = \"2027-12-31\"\npoints_taken_over = true",
        );
        let e = Config::parse(&both, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one rule"), "{e}");
        let takeover = both.replace("points_expire_on = \"2027-12-31\"\n", "");
        let c = Config::parse(&takeover, Path::new(".")).unwrap();
        assert!(c.partners["skyways"].points_taken_over);
    }

    proptest::proptest! {
        /// Random text as a config: an error, never a panic.
        #[test]
        fn random_text_never_panics(text in "(?s).{0,400}") {
            let _ = Config::parse(&text, Path::new("."));
        }

        /// The example with one value replaced by random text (quoted, or bare): an error or a
        /// config, never a panic. This reaches every validator of every key.
        #[test]
        fn any_value_of_the_example_never_panics(line in 0usize..80, value in "(?s).{0,40}", quoted in proptest::bool::ANY) {
            let lines: Vec<&str> = GOOD.lines().collect();
            let i = line % lines.len();
            let Some((key, _)) = lines[i].split_once(" = ") else { return Ok(()); };
            let v = if quoted { format!("{value:?}") } else { value.clone() };
            let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            edited[i] = format!("{key} = {v}");
            let _ = Config::parse(&edited.join("\n"), Path::new("."));
        }

        /// Rates with more decimals than settlements carry exactly are refused at load.
        #[test]
        fn rates_are_bounded(decimals in 0u32..28, mantissa in 1i64..i64::MAX) {
            let rate = Decimal::new(mantissa, decimals);
            let text = GOOD.replacen("redemption_rate = \"0.010\"", &format!("redemption_rate = \"{rate}\""), 1);
            let ok = Config::parse(&text, Path::new(".")).is_ok();
            proptest::prop_assert_eq!(ok, rate.scale() <= 8 && rate < Decimal::from(MAX_RATE));
        }
    }

    #[test]
    fn a_non_ascii_iban_is_an_error_not_a_panic() {
        let text = GOOD.replacen("DE89370400440532013000", "Dé89370400440532013000", 1);
        let err = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("iban"), "{err}");
        let text = GOOD.replacen("COBADEFFXXX", "COBADEFé", 1);
        assert!(Config::parse(&text, Path::new(".")).is_err());
        let text = GOOD.replacen("\"0.010\"", "\"0.0033333333333333333333333333\"", 1);
        let err = Config::parse(&text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("decimals"), "{err}");
    }

    #[test]
    fn wrong_values_name_their_key() {
        let cases = [
            ("currency = \"EUR\"", "currency = \"XXX\"", "`currency`"),
            (
                "time_zone = \"Europe/Amsterdam\"",
                "time_zone = \"Mars/Olympus\"",
                "`time_zone`",
            ),
            (
                "redemption_rate = \"0.010\"",
                "redemption_rate = \"ten\"",
                "`partners[0].redemption_rate`",
            ),
            ("cutoff = \"00:00\"", "cutoff = \"25:00\"", "`cutoff`"),
        ];
        for (from, to, key) in cases {
            assert!(GOOD.contains(from), "example lacks {from}");
            let err = Config::parse(&GOOD.replacen(from, to, 1), Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
        let err = Config::parse(&GOOD.replacen("listen", "lisen", 1), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }
}
