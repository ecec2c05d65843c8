//! The programme's state in SQL, once for both backends: campaigns, vouchers, and each member's
//! tier, qualifying points per day, campaign grants and stamp cards in one `members.programme`
//! text. The batch reads and writes it inside its transaction; the
//! read pool uses the same reads for `GetMember` and quotes.

use super::error::StoreError;
use crate::ledger::{Funder, Micros};
use crate::programme::{Campaign, Effect, Ladder, MemberProgramme, TierState};
use rust_decimal::Decimal;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

/// What a batch changes of the programme's state.
#[derive(Debug, Default, Clone)]
pub struct ProgrammeWrites {
    /// Members' programme state as it now stands, encoded (see [`encode_state`]), for the members
    /// whose state changed (`None`: nothing left to keep).
    pub states: BTreeMap<String, Option<String>>,
    /// The batch's instant (the first-seen instant should a member row be missing).
    pub at: Micros,
    /// Vouchers issued.
    pub vouchers: Vec<crate::programme::Voucher>,
}

impl ProgrammeWrites {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.vouchers.is_empty()
    }
}

/// A member's programme state as `members.programme` holds it: compact JSON, one row per member
/// so that a batch reads and writes one row per member whatever the programme runs. Migration
/// 0012 builds the same shape with SQL; keep the two in step.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stored {
    /// The tier: its name, since when, next review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<(String, Micros, Micros)>,
    /// Qualifying points per UTC day, days in order, none before `f`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    q: Vec<(i64, i64)>,
    /// The first day kept: earlier days no window can count any more were dropped (the audit
    /// compares the days from here on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<i64>,
    /// Points each campaign granted, net of reversals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    g: Vec<(String, i64)>,
    /// Stamp cards: partner, stamps, when the first stamp was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    c: Vec<(String, i64, Micros)>,
}

fn stored(text: Option<&str>) -> Result<Stored, StoreError> {
    match text {
        None => Ok(Stored::default()),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| StoreError::Corrupt(format!("members.programme holds {s:?}: {e}"))),
    }
}

/// A member's programme state from its stored text at `now`: reviews due by then applied. A tier
/// no longer on the ladder counts as its lowest rung; without a ladder, tiers and days are not
/// read (they are kept as stored, see [`encode_state`]).
pub fn state_of(
    text: Option<&str>,
    ladder: Option<&Ladder>,
    now: Micros,
) -> Result<MemberProgramme, StoreError> {
    let s = stored(text)?;
    let mut m = MemberProgramme {
        granted: s.g.into_iter().collect(),
        cards: s
            .c
            .into_iter()
            .map(|(p, stamps, started_at)| (p, crate::programme::Card { stamps, started_at }))
            .collect(),
        ..MemberProgramme::default()
    };
    // Days are kept with or without a ladder: an earn reversal takes back what its earn counted.
    m.days = s.q.into_iter().collect();
    m.days_from = s.f;
    if let Some(l) = ladder {
        m.tier = s.t.map(|(name, since, review_at)| TierState {
            tier: l.index(&name).unwrap_or(0),
            since,
            review_at,
        });
        m.apply_reviews(l, now);
    }
    Ok(m)
}

/// The text to store for `m` at `now` (`None`: nothing to store). Days no window from `now` on
/// can count are dropped (and the first day kept remembered); without a ladder the stored tier of
/// `previous` is kept as it was and no day is dropped, so switching tiers off for a while loses
/// nothing.
pub fn encode_state(
    m: &MemberProgramme,
    ladder: Option<&Ladder>,
    previous: Option<&str>,
    now: Micros,
) -> Result<Option<String>, StoreError> {
    let mut s = Stored {
        g: m.granted
            .iter()
            .filter(|(_, p)| **p != 0)
            .map(|(c, p)| (c.clone(), *p))
            .collect(),
        c: m.cards
            .iter()
            .map(|(p, c)| (p.clone(), c.stamps, c.started_at))
            .collect(),
        ..Stored::default()
    };
    // Without a ladder nothing new counts and no day is dropped; the stored tier waits as it was.
    let first = match ladder {
        Some(l) => {
            s.t = m.tier.as_ref().map(|t| {
                let name = l.tiers[t.tier.min(l.tiers.len() - 1)].name.clone();
                (name, t.since, t.review_at)
            });
            Some(
                l.first_counted_day(now)
                    .max(m.days_from.unwrap_or(i64::MIN)),
            )
        }
        None => {
            s.t = stored(previous)?.t;
            m.days_from
        }
    };
    s.f = first;
    s.q = m
        .days
        .range(first.unwrap_or(i64::MIN)..)
        .filter(|(_, p)| **p != 0)
        .map(|(d, p)| (*d, *p))
        .collect();
    if s.t.is_none() && s.q.is_empty() && s.g.is_empty() && s.c.is_empty() && s.f.is_none() {
        return Ok(None);
    }
    serde_json::to_string(&s)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("a member's programme state: {e}")))
}

const CAMPAIGN_COLUMNS: &str = "campaign_id, name, starts_at, ends_at, partners, partner_kinds, min_amount, tiers, \
    category, welcome, multiplier, bonus_points, cap_per_member, funder, created_at, created_by, ended_at";

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn decimal(column: &str, s: Option<String>) -> Result<Option<Decimal>, StoreError> {
    s.map(|s| {
        Decimal::from_str(&s).map_err(|_| StoreError::Corrupt(format!("{column} holds {s:?}")))
    })
    .transpose()
}

/// A read or change of the programme through the read pool (one store method for all of them).
#[derive(Debug, Clone)]
pub enum ProgrammeCall {
    /// A member's state at `now` and the campaigns in force then, as an earn at `partner` would
    /// see them.
    State {
        /// The member.
        member: String,
        /// The partner asking.
        partner: String,
        /// The ladder.
        ladder: Option<Ladder>,
        /// The instant.
        now: Micros,
    },
    /// Every campaign not over at the instant (all, if `None`).
    Campaigns {
        /// The instant.
        not_over_at: Option<Micros>,
    },
    /// Stores a campaign unless one with its id exists.
    Create(Campaign),
    /// Redeems a voucher for `partner` under its transaction id `txn`.
    Redeem {
        /// The calling partner.
        partner: String,
        /// The partner's id of the redemption.
        txn: String,
        /// The voucher.
        voucher: String,
        /// The instant.
        now: Micros,
    },
    /// Ends a campaign now.
    End {
        /// Its id.
        id: String,
        /// The instant.
        now: Micros,
        /// Who ends it.
        by: String,
    },
}

/// The answer to a [`ProgrammeCall`].
#[derive(Debug, Clone)]
pub enum ProgrammeReply {
    /// The member's state and the campaigns in force.
    State(MemberProgramme, Vec<Campaign>),
    /// Campaigns.
    Campaigns(Vec<Campaign>),
    /// The stored campaign: `Ok` if it is the one given (new, or the same terms again), `Err` if
    /// another campaign has its id.
    Created(Result<Campaign, Campaign>),
    /// The campaign after ending it (`None`: unknown).
    Ended(Option<Campaign>),
    /// The voucher as redeemed, or why not.
    Redeemed(Result<crate::programme::Voucher, RedeemRefusal>),
}

/// Why a voucher is not redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemRefusal {
    /// No such voucher.
    Unknown,
    /// Another partner's voucher.
    OtherPartner(String),
    /// Past its expiry.
    Expired(Micros),
    /// Redeemed before, under another transaction id.
    AlreadyRedeemed(Micros),
    /// The transaction id redeemed another voucher.
    IdUsed(String),
}

/// The programme SQL, generic over the sqlx database.
pub struct ProgrammeSql<DB>(std::marker::PhantomData<DB>);

impl<DB> ProgrammeSql<DB>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    bool: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<String>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Option<i64>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    fn campaign(row: &DB::Row) -> Result<Campaign, StoreError> {
        let multiplier = decimal("campaigns.multiplier", row.try_get(10)?)?;
        let bonus: Option<i64> = row.try_get(11)?;
        let effect = match (multiplier, bonus) {
            (Some(m), None) => Effect::Multiplier(m),
            (None, Some(b)) => Effect::Bonus(b),
            _ => {
                return Err(StoreError::Corrupt(
                    "a campaign has both or neither of multiplier and bonus_points".into(),
                ));
            }
        };
        let funder: String = row.try_get(13)?;
        Ok(Campaign {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            starts_at: row.try_get(2)?,
            ends_at: row.try_get(3)?,
            partners: list(&row.try_get::<String, _>(4)?),
            partner_kinds: list(&row.try_get::<String, _>(5)?),
            min_amount: decimal("campaigns.min_amount", row.try_get(6)?)?,
            tiers: list(&row.try_get::<String, _>(7)?),
            category: row.try_get(8)?,
            welcome: row.try_get(9)?,
            effect,
            cap_per_member: row.try_get(12)?,
            funder: Funder::parse(&funder)
                .ok_or_else(|| StoreError::Corrupt(format!("campaigns.funder holds {funder:?}")))?,
            created_at: row.try_get(14)?,
            created_by: row.try_get(15)?,
            ended_at: row.try_get(16)?,
        })
    }

    /// Campaigns in force at `now`.
    pub async fn live_campaigns(
        conn: &mut DB::Connection,
        now: Micros,
    ) -> Result<Vec<Campaign>, StoreError> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE ends_at > $1 AND starts_at <= $1 \
             AND (ended_at IS NULL OR ended_at > $1) ORDER BY campaign_id"
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(&mut *conn).await?;
        rows.iter().map(Self::campaign).collect()
    }

    /// Every campaign, or those not over by `now`, by start.
    pub async fn campaigns(
        conn: &mut DB::Connection,
        not_over_at: Option<Micros>,
    ) -> Result<Vec<Campaign>, StoreError> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE ends_at > $1 AND (ended_at IS NULL OR ended_at > $1) \
             ORDER BY starts_at, campaign_id"
        );
        let rows = sqlx::query(&sql)
            .bind(not_over_at.unwrap_or(i64::MIN))
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::campaign).collect()
    }

    /// One campaign.
    pub async fn campaign_by_id(
        conn: &mut DB::Connection,
        id: &str,
    ) -> Result<Option<Campaign>, StoreError> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE campaign_id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(Self::campaign).transpose()
    }

    /// Stores a new campaign: `Ok` with the stored one if it is new or has the same terms,
    /// `Err` with the existing one if another campaign has its id.
    pub async fn insert_campaign(
        conn: &mut DB::Connection,
        c: &Campaign,
    ) -> Result<Result<Campaign, Campaign>, StoreError> {
        let (multiplier, bonus) = match &c.effect {
            Effect::Multiplier(m) => (Some(m.normalize().to_string()), None),
            Effect::Bonus(b) => (None, Some(*b)),
        };
        let sql = format!(
            "INSERT INTO campaigns ({CAMPAIGN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17) ON CONFLICT (campaign_id) DO NOTHING"
        );
        sqlx::query(&sql)
            .bind(c.id.clone())
            .bind(c.name.clone())
            .bind(c.starts_at)
            .bind(c.ends_at)
            .bind(c.partners.join(","))
            .bind(c.partner_kinds.join(","))
            .bind(c.min_amount.map(|a| a.normalize().to_string()))
            .bind(c.tiers.join(","))
            .bind(c.category.clone())
            .bind(c.welcome)
            .bind(multiplier)
            .bind(bonus)
            .bind(c.cap_per_member)
            .bind(c.funder.as_str().to_string())
            .bind(c.created_at)
            .bind(c.created_by.clone())
            .bind(c.ended_at)
            .execute(&mut *conn)
            .await?;
        let stored = Self::campaign_by_id(conn, &c.id).await?.ok_or_else(|| {
            StoreError::Unavailable("a stored campaign cannot be read back".into())
        })?;
        Ok(if stored.same_terms(c) {
            Ok(stored)
        } else {
            Err(stored)
        })
    }

    /// Ends a campaign at `now` (no earn accepted from then on gets it). `None` if unknown.
    pub async fn end_campaign(
        conn: &mut DB::Connection,
        id: &str,
        now: Micros,
        by: &str,
    ) -> Result<Option<Campaign>, StoreError> {
        sqlx::query(
            "UPDATE campaigns SET ended_at = $2, ended_by = $3 WHERE campaign_id = $1 AND ended_at IS NULL AND ends_at > $2",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(by.to_string())
        .execute(&mut *conn)
        .await?;
        Self::campaign_by_id(conn, id).await
    }

    /// The stored programme text of `members` (a member without a row is left out).
    pub async fn load(
        conn: &mut DB::Connection,
        members: &[String],
    ) -> Result<HashMap<String, Option<String>>, StoreError> {
        let mut out = HashMap::new();
        for chunk in members.chunks(1000) {
            let marks: Vec<String> = (1..=chunk.len()).map(super::dialect::mark::<DB>).collect();
            let sql = format!(
                "SELECT member_id, programme FROM members WHERE member_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q.bind(m.clone());
            }
            for row in q.fetch_all(&mut *conn).await? {
                out.insert(row.try_get::<String, _>(0)?, row.try_get(1)?);
            }
        }
        Ok(out)
    }

    /// Which of these (member, partner) pairs have an earn (for welcome campaigns).
    pub async fn earned_before(
        conn: &mut DB::Connection,
        pairs: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let mut out = HashSet::new();
        for (member, partner) in pairs {
            // The activity index (partner, member, …) answers each pair with one probe.
            let row = sqlx::query(
                "SELECT 1 FROM transactions WHERE partner_id = $1 AND member_id = $2 AND kind = 'earn' LIMIT 1",
            )
            .bind(partner.clone())
            .bind(member.clone())
            .fetch_optional(&mut *conn)
            .await?;
            if row.is_some() {
                out.insert((member.clone(), partner.clone()));
            }
        }
        Ok(out)
    }

    /// Writes what a batch changed: one multi-row statement per table and 250 rows.
    pub async fn write(conn: &mut DB::Connection, w: &ProgrammeWrites) -> Result<(), sqlx::Error> {
        let values = super::dialect::rows_of_marks::<DB>;
        const ROWS: usize = 250;
        let states: Vec<_> = w.states.iter().collect();
        for chunk in states.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO members (member_id, first_seen, programme) VALUES {} \
                 ON CONFLICT (member_id) DO UPDATE SET programme = excluded.programme",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (member, text) in chunk {
                q = q.bind((*member).clone()).bind(w.at).bind((*text).clone());
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in w.vouchers.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO vouchers (voucher_id, member_id, partner_id, what, issued_at, expires_at, earn_id) VALUES {}",
                values(chunk.len(), 7)
            );
            let mut q = sqlx::query(&sql);
            for v in chunk {
                q = q
                    .bind(v.id.clone())
                    .bind(v.member.clone())
                    .bind(v.partner.clone())
                    .bind(v.what.clone())
                    .bind(v.issued_at)
                    .bind(v.expires_at)
                    .bind(v.earn);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    fn voucher(row: &DB::Row) -> Result<crate::programme::Voucher, StoreError> {
        Ok(crate::programme::Voucher {
            earn: row.try_get(8)?,
            id: row.try_get(0)?,
            member: row.try_get(1)?,
            partner: row.try_get(2)?,
            what: row.try_get(3)?,
            issued_at: row.try_get(4)?,
            expires_at: row.try_get(5)?,
            redeemed_at: row.try_get(6)?,
            redeemed_by: row.try_get(7)?,
        })
    }

    /// Vouchers whose `column` (`member_id` or `voucher_id`) is `value`, oldest first.
    async fn vouchers(
        conn: &mut DB::Connection,
        column: &str,
        value: &str,
    ) -> Result<Vec<crate::programme::Voucher>, StoreError> {
        let sql = format!(
            "SELECT voucher_id, member_id, partner_id, what, issued_at, expires_at, redeemed_at, redeemed_by, \
             earn_id FROM vouchers WHERE {column} = $1 ORDER BY issued_at, voucher_id"
        );
        let rows = sqlx::query(&sql)
            .bind(value.to_string())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(Self::voucher).collect()
    }

    async fn redeem(
        conn: &mut DB::Connection,
        partner: &str,
        txn: &str,
        voucher: &str,
        now: Micros,
    ) -> Result<Result<crate::programme::Voucher, RedeemRefusal>, StoreError> {
        let answer = |v: crate::programme::Voucher| {
            if v.redeemed_by.as_deref() == Some(txn) && v.partner == partner {
                Ok(v)
            } else if let Some(at) = v.redeemed_at {
                Err(RedeemRefusal::AlreadyRedeemed(at))
            } else if v.partner != partner {
                Err(RedeemRefusal::OtherPartner(v.partner))
            } else {
                Err(RedeemRefusal::Expired(v.expires_at))
            }
        };
        // A retry: the id already redeemed a voucher of this partner.
        let sql = "SELECT voucher_id, member_id, partner_id, what, issued_at, expires_at, redeemed_at, redeemed_by, \
             earn_id FROM vouchers WHERE partner_id = $1 AND redeemed_by = $2";
        if let Some(row) = sqlx::query(sql)
            .bind(partner.to_string())
            .bind(txn.to_string())
            .fetch_optional(&mut *conn)
            .await?
        {
            let v = Self::voucher(&row)?;
            return Ok(if v.id == voucher {
                Ok(v)
            } else {
                Err(RedeemRefusal::IdUsed(v.id))
            });
        }
        let Some(v) = Self::vouchers(conn, "voucher_id", voucher).await?.pop() else {
            return Ok(Err(RedeemRefusal::Unknown));
        };
        if v.partner != partner || v.redeemed_at.is_some() || v.expires_at <= now {
            return Ok(answer(v));
        }
        sqlx::query(
            "UPDATE vouchers SET redeemed_at = $1, redeemed_by = $2 WHERE voucher_id = $3 AND redeemed_at IS NULL",
        )
        .bind(now)
        .bind(txn.to_string())
        .bind(voucher.to_string())
        .execute(&mut *conn)
        .await?;
        // Whoever won a race, the row says who redeemed it.
        match Self::vouchers(conn, "voucher_id", voucher).await?.pop() {
            Some(v) => Ok(answer(v)),
            None => Ok(Err(RedeemRefusal::Unknown)),
        }
    }

    /// Answers a [`ProgrammeCall`].
    pub async fn call(
        conn: &mut DB::Connection,
        call: ProgrammeCall,
    ) -> Result<ProgrammeReply, StoreError> {
        Ok(match call {
            ProgrammeCall::State {
                member,
                partner,
                ladder,
                now,
            } => {
                let members = [member.clone()];
                let text = Self::load(conn, &members).await?.remove(&member).flatten();
                let mut m = state_of(text.as_deref(), ladder.as_ref(), now)?;
                let campaigns = Self::live_campaigns(conn, now).await?;
                m.vouchers = Self::vouchers(conn, "member_id", &member).await?;
                if campaigns.iter().any(|c| c.welcome)
                    && !Self::earned_before(conn, &[(member, partner.clone())])
                        .await?
                        .is_empty()
                {
                    m.earned_at.insert(partner);
                }
                ProgrammeReply::State(m, campaigns)
            }
            ProgrammeCall::Campaigns { not_over_at } => {
                ProgrammeReply::Campaigns(Self::campaigns(conn, not_over_at).await?)
            }
            ProgrammeCall::Create(c) => {
                ProgrammeReply::Created(Self::insert_campaign(conn, &c).await?)
            }
            ProgrammeCall::Redeem {
                partner,
                txn,
                voucher,
                now,
            } => ProgrammeReply::Redeemed(Self::redeem(conn, &partner, &txn, &voucher, now).await?),
            ProgrammeCall::End { id, now, by } => {
                ProgrammeReply::Ended(Self::end_campaign(conn, &id, now, &by).await?)
            }
        })
    }
}

/// Checks the earns with parts against what was stored beside them (recomputed, not trusted):
/// an earn's parts sum to its points and each funder's parts to that funder's lot; what its
/// reversals took back of each part sums to the part's reversed points, never beyond the part; a
/// reversal's parts sum to its points and its partner share to its issuance row; campaign grants
/// are what the earns and reversals gave and took back of each campaign; each member's qualifying
/// points per day (from the first day kept) are what its counted earns and their reversals gave.
pub async fn verify<DB>(conn: &mut DB::Connection) -> Result<Vec<String>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use crate::ledger::{Funder, PartKind, parts};
    let mut bad = Vec::new();
    let rows = sqlx::query(
        "SELECT t.id, t.kind, t.member_id, t.points, t.reversed_points, t.original_id, t.parts, t.parts_reversed, \
         (SELECT CAST(COALESCE(SUM(i.points), 0) AS BIGINT) FROM issuance i WHERE i.txn_id = t.id) \
         FROM transactions t WHERE t.parts IS NOT NULL ORDER BY t.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let lots: HashMap<i64, i64> = sqlx::query(
        "SELECT l.id, l.points FROM lots l JOIN transactions t ON t.id = ABS(l.id) WHERE t.parts IS NOT NULL",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    // Per earn: its parts and what reversals took of each.
    let mut earns: HashMap<i64, (Vec<i64>, Vec<i64>)> = HashMap::new();
    let mut grants: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let member: String = row.try_get(2)?;
        let points: i64 = row.try_get(3)?;
        let stored: Option<String> = row.try_get(6)?;
        let issued: i64 = row.try_get(8)?;
        let ps = match parts::decode(stored.as_deref(), points) {
            Ok(p) => p,
            Err(e) => {
                bad.push(format!("transaction {id}: {e}"));
                continue;
            }
        };
        if ps.iter().map(|p| p.points).sum::<i64>() != points {
            bad.push(format!(
                "transaction {id}: its parts do not sum to its {points} points"
            ));
        }
        let sign = if kind == "earn" { 1 } else { -1 };
        for p in ps.iter().filter(|p| p.kind == PartKind::Campaign) {
            *grants
                .entry((p.source.clone(), member.clone()))
                .or_default() += sign * p.points;
        }
        let partner_share: i64 = ps
            .iter()
            .filter(|p| p.funder == Funder::Partner)
            .map(|p| p.points)
            .sum();
        if issued != sign * partner_share {
            bad.push(format!(
                "transaction {id}: issuance row of {issued} points, but the partner funds {partner_share}"
            ));
        }
        if kind == "earn" {
            for (f, p) in parts::by_funder(&ps) {
                if lots.get(&f.lot_of(id)) != Some(&p) {
                    bad.push(format!(
                        "earn {id}: the {} lot does not hold its {p} points",
                        f.as_str()
                    ));
                }
            }
            let reversed: Option<String> = row.try_get(7)?;
            let done: Vec<i64> = reversed
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            let entry = earns
                .entry(id)
                .or_insert_with(|| (vec![0; ps.len()], vec![]));
            entry.1 = ps.iter().map(|p| p.points).collect();
            if done.len() != ps.len()
                || done.iter().sum::<i64>() != row.try_get::<i64, _>(4)?
                || done.iter().zip(&ps).any(|(d, p)| *d < 0 || *d > p.points)
                || entry.0.len() != done.len()
            {
                bad.push(format!(
                    "earn {id}: its reversed points per part are not its reversals'"
                ));
            }
            entry.0 = entry.0.iter().zip(&done).map(|(a, d)| a - d).collect();
        } else if let Some(orig) = row.try_get::<Option<i64>, _>(5)? {
            let entry = earns
                .entry(orig)
                .or_insert_with(|| (vec![0; ps.len()], vec![]));
            if entry.0.len() != ps.len() {
                bad.push(format!("reversal {id}: its parts are not its earn's"));
                continue;
            }
            for (a, p) in entry.0.iter_mut().zip(&ps) {
                *a += p.points;
            }
        }
    }
    // What reversals took (added) minus the earn's stored reversed points (subtracted): zero.
    for (earn, (diff, _)) in &earns {
        if diff.iter().any(|d| *d != 0) {
            bad.push(format!(
                "earn {earn}: its reversals took {diff:?} per part beyond its reversed points"
            ));
        }
    }
    // Qualifying points per (member, day): what earns accepted while tiers ran gave on their day,
    // less what reversals of those earns took back (on the earn's day).
    let mut counted: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT t.member_id, t.kind, t.points, COALESCE(o.accepted_at, t.accepted_at) FROM transactions t \
         LEFT JOIN transactions o ON o.id = t.original_id \
         WHERE (t.kind = 'earn' AND t.tier IS NOT NULL) OR (t.kind = 'reverse_earn' AND o.tier IS NOT NULL)",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let kind: String = r.try_get(1)?;
        let points: i64 = r.try_get(2)?;
        let day = crate::programme::day_of(r.try_get(3)?);
        *counted
            .entry(r.try_get(0)?)
            .or_default()
            .entry(day)
            .or_default() += if kind == "earn" { points } else { -points };
    }
    let mut stored_grants: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in sqlx::query("SELECT member_id, programme FROM members WHERE programme IS NOT NULL")
        .fetch_all(&mut *conn)
        .await?
    {
        let member: String = r.try_get(0)?;
        let text: String = r.try_get(1)?;
        match stored(Some(&text)) {
            Ok(s) => {
                for (campaign, points) in s.g {
                    *stored_grants.entry((campaign, member.clone())).or_default() += points;
                }
                let from = s.f.unwrap_or(i64::MIN);
                let days: BTreeMap<i64, i64> = s.q.into_iter().filter(|(_, p)| *p != 0).collect();
                let expected: BTreeMap<i64, i64> = counted
                    .remove(&member)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(d, p)| *d >= from && *p != 0)
                    .collect();
                if days != expected {
                    bad.push(format!(
                        "member {member}: qualifying points per day {days:?} but its earns and reversals give {expected:?}"
                    ));
                }
            }
            Err(e) => bad.push(format!("member {member}: {e}")),
        }
    }
    // A member with counted points keeps a programme text (at least the first day kept).
    for (member, days) in counted {
        if days.values().any(|p| *p != 0) {
            bad.push(format!(
                "member {member}: earns counted qualifying points but no programme state is stored"
            ));
        }
    }
    grants.retain(|_, v| *v != 0);
    stored_grants.retain(|_, v| *v != 0);
    if grants != stored_grants {
        bad.push("campaign grants differ from what the earns and reversals gave and took".into());
    }
    Ok(bad)
}
