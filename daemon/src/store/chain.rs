//! The ledger's hash chain: every committed batch that writes transactions appends one link,
//! SHA-256 over the previous link's hash and a canonical encoding of the rows the batch wrote, so
//! that a row changed, inserted or deleted behind the daemon's back — even by someone with
//! database access — breaks the link of its batch (`coalitiond audit --verify-chain`), and each
//! settlement pins the head of the chain at its seal.
//!
//! What a link covers: the money-bearing facts a batch writes and nothing rewrites later — its
//! transactions (all but the member id and the reversed counters), the lots its earns open (id,
//! issuer, points, instant), its allocations and its issuance rows. Member ids are left out
//! because retention and forgetting replace them lawfully; what changes later (a lot's points
//! left, a member's kept balance, the matrix, the totals) is derived from the covered rows and
//! recomputed by the audit.
//!
//! Rows carry their batch in `transactions.batch_id` (the batch's smallest transaction id); lots,
//! allocations and issuance rows belong to the batch of their transaction.

use super::error::StoreError;
use super::model::Writes;
use crate::ledger::Micros;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// The hash before the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One batch's rows, encoded canonically: each row its own byte string, the batch's digest over
/// them sorted.
#[derive(Debug, Default)]
pub struct BatchRows {
    rows: Vec<Vec<u8>>,
    transactions: i64,
}

/// A field of a row.
pub enum F<'a> {
    /// A whole number.
    I(i64),
    /// Text (a decimal as its normalized text).
    S(&'a str),
    /// Bytes.
    B(&'a [u8]),
    /// Nothing (NULL).
    N,
}

impl BatchRows {
    /// Adds a row: a tag (`T`, `L`, `A`, `I`) and its fields, each length-prefixed.
    pub fn row(&mut self, tag: u8, fields: &[F<'_>]) {
        let mut r = Vec::with_capacity(96);
        r.push(tag);
        for f in fields {
            match f {
                F::I(i) => {
                    r.push(b'i');
                    r.extend_from_slice(&i.to_le_bytes());
                }
                F::S(s) => {
                    r.push(b's');
                    r.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    r.extend_from_slice(s.as_bytes());
                }
                F::B(b) => {
                    r.push(b'b');
                    r.extend_from_slice(&(b.len() as u64).to_le_bytes());
                    r.extend_from_slice(b);
                }
                F::N => r.push(b'n'),
            }
        }
        if tag == b'T' {
            self.transactions += 1;
        }
        self.rows.push(r);
    }

    /// Rows so far.
    pub fn len(&self) -> i64 {
        self.rows.len() as i64
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Transactions among them.
    pub fn transactions(&self) -> i64 {
        self.transactions
    }

    /// SHA-256 over the rows in sorted order, each length-prefixed.
    pub fn digest(mut self) -> [u8; 32] {
        self.rows.sort_unstable();
        let mut h = Sha256::new();
        for r in &self.rows {
            h.update((r.len() as u64).to_le_bytes());
            h.update(r);
        }
        h.finalize().into()
    }
}

/// A decimal's canonical text (`1.50` and `1.5` are one amount).
pub fn decimal_text(s: &str) -> Result<String, StoreError> {
    s.trim()
        .parse::<rust_decimal::Decimal>()
        .map(|d| d.normalize().to_string())
        .map_err(|_| StoreError::Corrupt(format!("{s:?} is not a decimal")))
}

/// The transaction row as the chain encodes it.
#[allow(clippy::too_many_arguments)]
pub fn txn_row(
    b: &mut BatchRows,
    id: i64,
    partner: &str,
    partner_txn_id: &str,
    kind: &str,
    points: i64,
    original_id: Option<i64>,
    amount: Option<&str>,
    currency: Option<&str>,
    request_hash: &[u8],
    balance_after: i64,
    accepted_at: Micros,
    cycle: &str,
) {
    b.row(
        b'T',
        &[
            F::I(id),
            F::S(partner),
            F::S(partner_txn_id),
            F::S(kind),
            F::I(points),
            original_id.map_or(F::N, F::I),
            amount.map_or(F::N, F::S),
            currency.map_or(F::N, F::S),
            F::B(request_hash),
            F::I(balance_after),
            F::I(accepted_at),
            F::S(cycle),
        ],
    );
}

/// The batch id its transactions carry: the smallest of their ids, when the batch is chained.
pub fn batch_id(w: &Writes) -> Option<i64> {
    w.chain
        .then(|| w.new_txns.iter().map(|t| t.id).min())
        .flatten()
}

/// The rows a batch wrote, from its writes: `None` if it wrote no transaction (no link).
pub fn rows_of(w: &Writes) -> Result<Option<(i64, BatchRows)>, StoreError> {
    let Some(batch_id) = w.new_txns.iter().map(|t| t.id).min() else {
        return Ok(None);
    };
    let cycle = w.cycle.to_string();
    let new: HashSet<i64> = w.new_txns.iter().map(|t| t.id).collect();
    let mut b = BatchRows::default();
    for t in &w.new_txns {
        let amount = t
            .purchase
            .as_ref()
            .map(|(a, _)| decimal_text(a))
            .transpose()?;
        txn_row(
            &mut b,
            t.id,
            &t.partner,
            &t.partner_txn_id,
            t.kind.as_str(),
            t.points,
            t.original_id,
            amount.as_deref(),
            t.purchase.as_ref().map(|(_, c)| c.as_str()),
            &t.request_hash,
            t.receipt.balance_after,
            t.accepted_at,
            &cycle,
        );
    }
    // An earn's lots: the partner's (its id) and the operator's (minus its id).
    for l in w.lots.iter().filter(|l| new.contains(&l.id.abs())) {
        b.row(
            b'L',
            &[
                F::I(l.id),
                F::S(&l.issuer),
                F::I(l.points),
                F::I(l.earned_at),
            ],
        );
    }
    for a in &w.allocations {
        let rate = a.rate.normalize().to_string();
        b.row(
            b'A',
            &[
                F::I(a.txn),
                F::I(i64::from(a.seq)),
                F::I(a.lot),
                F::S(&a.issuer),
                F::S(&a.redeemer),
                F::I(a.points),
                F::S(&rate),
                a.reverses.map_or(F::N, |r| F::I(r.0)),
                a.reverses.map_or(F::N, |r| F::I(i64::from(r.1))),
                F::I(a.accepted_at),
                F::S(&cycle),
            ],
        );
    }
    for i in &w.issuance {
        let fee = i.fee_rate.normalize().to_string();
        b.row(
            b'I',
            &[
                F::I(i.txn),
                F::S(&i.issuer),
                F::S(&fee),
                F::I(i.points),
                F::S(&cycle),
            ],
        );
    }
    Ok(Some((batch_id, b)))
}

/// A link's hash: over the previous hash, its place, its batch and the digest of its rows.
pub fn link_hash(prev: &str, seq: i64, batch_id: i64, rows: i64, digest: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(seq.to_le_bytes());
    h.update(batch_id.to_le_bytes());
    h.update(rows.to_le_bytes());
    h.update(digest);
    hex::encode(h.finalize())
}

/// Appends the link of a batch that wrote `w`, inside its transaction. `head_sql` reads the
/// head (PostgreSQL locks it `FOR UPDATE`, so that the daemons of one database append one
/// chain in commit order; the SQLite writer holds the file's write lock already).
pub async fn append<DB>(
    conn: &mut DB::Connection,
    w: &Writes,
    head_sql: &str,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    if !w.chain {
        return Ok(());
    }
    let Some((batch_id, rows)) = rows_of(w).map_err(|e| sqlx::Error::Encode(Box::new(e)))? else {
        return Ok(());
    };
    let now = w.new_txns.first().map_or(0, |t| t.accepted_at);
    let head = sqlx::query(head_sql).fetch_one(&mut *conn).await?;
    let (seq, prev): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
    let seq = seq + 1;
    let (n, transactions) = (rows.len(), rows.transactions());
    let hash = link_hash(&prev, seq, batch_id, n, &rows.digest());
    sqlx::query(
        "INSERT INTO ledger_chain (seq, batch_id, transactions, row_count, prev_hash, hash, committed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seq)
    .bind(batch_id)
    .bind(transactions)
    .bind(n)
    .bind(prev)
    .bind(hash.clone())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE ledger_chain_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The head of the chain now (its hash): what a settlement pins at its seal.
pub async fn head<DB>(conn: &mut DB::Connection) -> Result<String, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    Ok(
        sqlx::query_scalar("SELECT hash FROM ledger_chain_head WHERE id = 1")
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// What `audit --verify-chain` found.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    /// Links checked.
    pub links: i64,
    /// Transactions written before the chain existed (not covered).
    pub before_chain: i64,
    /// The first link whose batch's rows were changed, inserted or deleted, if any.
    pub first_bad: Option<i64>,
    /// Everything that does not hold, the first bad batch first.
    pub violations: Vec<String>,
}

impl ChainReport {
    /// Whether the chain holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// SQL of the verifier, the same on both backends.
mod sql {
    pub const LINKS: &str = "SELECT seq, batch_id, row_count, prev_hash, hash, committed_at FROM ledger_chain \
        WHERE seq > $1 ORDER BY seq LIMIT $2";
    pub const TXNS: &str = "SELECT id, partner_id, partner_txn_id, kind, CAST(points AS BIGINT), \
        CAST(original_id AS BIGINT), CAST(purchase_amount AS TEXT), purchase_currency, request_hash, \
        CAST(balance_after AS BIGINT), CAST(accepted_at AS BIGINT), cycle FROM transactions WHERE batch_id = $1";
    pub const LOTS: &str = "SELECT l.id, l.issuer, CAST(l.points AS BIGINT), CAST(l.earned_at AS BIGINT) \
        FROM transactions t JOIN lots l ON l.id = t.id OR l.id = -t.id WHERE t.batch_id = $1";
    pub const ALLOCATIONS: &str = "SELECT a.txn_id, CAST(a.seq AS BIGINT), a.lot_id, a.issuer, a.redeemer, \
        CAST(a.points AS BIGINT), CAST(a.rate AS TEXT), CAST(a.reverses_txn AS BIGINT), \
        CAST(a.reverses_seq AS BIGINT), CAST(a.accepted_at AS BIGINT), a.cycle \
        FROM allocations a JOIN transactions t ON t.id = a.txn_id WHERE t.batch_id = $1";
    pub const ISSUANCE: &str = "SELECT i.txn_id, i.issuer, CAST(i.fee_rate AS TEXT), CAST(i.points AS BIGINT), i.cycle \
        FROM issuance i JOIN transactions t ON t.id = i.txn_id WHERE t.batch_id = $1";
    pub const HEAD: &str =
        "SELECT seq, hash, before_chain_through FROM ledger_chain_head WHERE id = 1";
    /// Transactions after the chain began that no link covers.
    pub const OUTSIDE: &str = "SELECT t.id, t.partner_id, t.partner_txn_id FROM transactions t \
        WHERE t.id > $1 AND (t.batch_id IS NULL OR NOT EXISTS \
        (SELECT 1 FROM ledger_chain c WHERE c.batch_id = t.batch_id)) ORDER BY t.id LIMIT 20";
    /// Rows after the chain began whose transaction is gone.
    pub const ORPHANS: [(&str, &str); 3] = [
        (
            "lot",
            "SELECT l.id FROM lots l WHERE (l.id > $1 OR l.id < -$1) AND NOT EXISTS \
             (SELECT 1 FROM transactions t WHERE t.id = l.id OR t.id = -l.id) ORDER BY l.id LIMIT 20",
        ),
        (
            "allocation of transaction",
            "SELECT DISTINCT a.txn_id FROM allocations a WHERE a.txn_id > $1 AND NOT EXISTS \
             (SELECT 1 FROM transactions t WHERE t.id = a.txn_id) ORDER BY a.txn_id LIMIT 20",
        ),
        (
            "issuance row of transaction",
            "SELECT DISTINCT i.txn_id FROM issuance i WHERE i.txn_id > $1 AND NOT EXISTS \
             (SELECT 1 FROM transactions t WHERE t.id = i.txn_id) ORDER BY i.txn_id LIMIT 20",
        ),
    ];
    /// The last link whose batch precedes a transaction id.
    pub const LINK_BEFORE: &str = "SELECT MAX(seq) FROM ledger_chain WHERE batch_id <= $1";
    pub const BEFORE_CHAIN: &str =
        "SELECT COUNT(*) FROM transactions WHERE batch_id IS NULL AND id <= $1";
    /// Settlements and the head each pinned.
    pub const SETTLEMENTS: &str = "SELECT cycle, content FROM settlements ORDER BY cycle";
    /// The latest link holding a transaction of a cycle.
    pub const CYCLE_LAST_LINK: &str = "SELECT MAX(c.seq) FROM transactions t JOIN ledger_chain c \
        ON c.batch_id = t.batch_id WHERE t.cycle = $1";
    pub const LINK_OF_HASH: &str = "SELECT seq FROM ledger_chain WHERE hash = $1";
}

/// Links read per query.
const PAGE: i64 = 1000;

/// Recomputes the chain from the rows: every link from its batch's rows and the link before it,
/// the head, rows no link covers, and the head each settlement pinned.
pub async fn verify<DB>(conn: &mut DB::Connection) -> Result<ChainReport, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let mut report = ChainReport::default();
    let mut bad: Vec<(i64, String)> = Vec::new();
    let head = sqlx::query(sql::HEAD).fetch_one(&mut *conn).await?;
    let (head_seq, head_hash, before): (i64, String, i64) =
        (head.try_get(0)?, head.try_get(1)?, head.try_get(2)?);
    report.before_chain = sqlx::query_scalar(sql::BEFORE_CHAIN)
        .bind(before)
        .fetch_one(&mut *conn)
        .await?;
    let (mut last_seq, mut last_hash) = (0_i64, GENESIS.to_string());
    loop {
        let links = sqlx::query(sql::LINKS)
            .bind(last_seq)
            .bind(PAGE)
            .fetch_all(&mut *conn)
            .await?;
        if links.is_empty() {
            break;
        }
        for l in &links {
            let seq: i64 = l.try_get(0)?;
            let batch_id: i64 = l.try_get(1)?;
            let stored_rows: i64 = l.try_get(2)?;
            let prev: String = l.try_get(3)?;
            let hash: String = l.try_get(4)?;
            let at: i64 = l.try_get(5)?;
            let name = format!(
                "batch #{seq} (transactions from id {batch_id}, committed {})",
                crate::clock::rfc3339(at)
            );
            if seq != last_seq + 1 {
                bad.push((
                    last_seq + 1,
                    format!(
                        "links #{} to #{} are missing: the chain was cut after batch #{last_seq}",
                        last_seq + 1,
                        seq - 1
                    ),
                ));
            }
            if prev != last_hash {
                bad.push((
                    seq,
                    format!("{name}: does not follow the link before it (its previous hash was rewritten)"),
                ));
            }
            let rows = batch_rows::<DB>(conn, batch_id).await?;
            let found = rows.len();
            let again = link_hash(&prev, seq, batch_id, found, &rows.digest());
            if again != hash {
                bad.push((
                    seq,
                    format!(
                        "{name}: its rows were changed, inserted or deleted behind the daemon's back \
                         ({stored_rows} rows when committed, {found} now)"
                    ),
                ));
            }
            report.links += 1;
            last_seq = seq;
            last_hash = hash;
        }
    }
    if (last_seq, last_hash.as_str()) != (head_seq, head_hash.as_str()) {
        bad.push((
            last_seq + 1,
            format!(
                "the head names batch #{head_seq} ({head_hash}) but the last link is #{last_seq} ({last_hash})"
            ),
        ));
    }
    let outside = sqlx::query(sql::OUTSIDE)
        .bind(before)
        .fetch_all(&mut *conn)
        .await?;
    for r in &outside {
        let id: i64 = r.try_get(0)?;
        let after: Option<i64> = sqlx::query_scalar(sql::LINK_BEFORE)
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        let after = after.unwrap_or(0);
        bad.push((
            after + 1,
            format!(
                "transaction {id} ({} {:?}) belongs to no batch of the chain: inserted behind the \
                 daemon's back after batch #{after}",
                r.try_get::<String, _>(1)?,
                r.try_get::<String, _>(2)?
            ),
        ));
    }
    for (what, q) in sql::ORPHANS {
        let ids: Vec<i64> = sqlx::query_scalar(q)
            .bind(before)
            .fetch_all(&mut *conn)
            .await?;
        for id in ids {
            let after: Option<i64> = sqlx::query_scalar(sql::LINK_BEFORE)
                .bind(id.abs())
                .fetch_one(&mut *conn)
                .await?;
            let after = after.unwrap_or(0);
            bad.push((
                after + 1,
                format!(
                    "{what} {id} has no transaction: rows inserted, or their transaction deleted, \
                     behind the daemon's back (after batch #{after})"
                ),
            ));
        }
    }
    // Each settlement pins the head at its seal: a link of the chain, after every link holding
    // a transaction of its cycle.
    let settlements = sqlx::query(sql::SETTLEMENTS).fetch_all(&mut *conn).await?;
    for s in &settlements {
        let cycle: String = s.try_get(0)?;
        let content: String = s.try_get(1)?;
        let pinned = serde_json::from_str::<coalition_clearing::Settlement>(&content)
            .map(|s| s.ledger_head)
            .unwrap_or_default();
        if pinned.is_empty() {
            continue;
        }
        let at: Option<i64> = if pinned == GENESIS {
            Some(0)
        } else {
            sqlx::query_scalar(sql::LINK_OF_HASH)
                .bind(pinned.clone())
                .fetch_optional(&mut *conn)
                .await?
        };
        let last: Option<i64> = sqlx::query_scalar(sql::CYCLE_LAST_LINK)
            .bind(cycle.clone())
            .fetch_one(&mut *conn)
            .await?;
        match at {
            None => bad.push((
                i64::MAX,
                format!("the settlement of {cycle} pins ledger head {pinned}, which is no link of the chain"),
            )),
            Some(at) if last.is_some_and(|l| l > at) => bad.push((
                last.unwrap_or(0),
                format!(
                    "the settlement of {cycle} pins batch #{at}, but batch #{} holds a transaction of its cycle",
                    last.unwrap_or(0)
                ),
            )),
            Some(_) => {}
        }
    }
    bad.sort_by_key(|(seq, _)| *seq);
    report.first_bad = bad.first().map(|(s, _)| *s).filter(|s| *s != i64::MAX);
    report.violations = bad.into_iter().map(|(_, v)| v).collect();
    Ok(report)
}

/// A batch's rows as stored now, encoded as the writer encoded them.
async fn batch_rows<DB>(conn: &mut DB::Connection, batch_id: i64) -> Result<BatchRows, StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Vec<u8>: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let mut b = BatchRows::default();
    for r in sqlx::query(sql::TXNS)
        .bind(batch_id)
        .fetch_all(&mut *conn)
        .await?
    {
        let amount: Option<String> = r.try_get(6)?;
        let amount = amount.as_deref().map(decimal_text).transpose()?;
        let currency: Option<String> = r.try_get(7)?;
        let hash: Vec<u8> = r.try_get(8)?;
        txn_row(
            &mut b,
            r.try_get(0)?,
            &r.try_get::<String, _>(1)?,
            &r.try_get::<String, _>(2)?,
            &r.try_get::<String, _>(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            amount.as_deref(),
            currency.as_deref(),
            &hash,
            r.try_get(9)?,
            r.try_get(10)?,
            &r.try_get::<String, _>(11)?,
        );
    }
    for r in sqlx::query(sql::LOTS)
        .bind(batch_id)
        .fetch_all(&mut *conn)
        .await?
    {
        b.row(
            b'L',
            &[
                F::I(r.try_get(0)?),
                F::S(&r.try_get::<String, _>(1)?),
                F::I(r.try_get(2)?),
                F::I(r.try_get(3)?),
            ],
        );
    }
    for r in sqlx::query(sql::ALLOCATIONS)
        .bind(batch_id)
        .fetch_all(&mut *conn)
        .await?
    {
        let rate = decimal_text(&r.try_get::<String, _>(6)?)?;
        let opt = |v: Option<i64>| v.map_or(F::N, F::I);
        b.row(
            b'A',
            &[
                F::I(r.try_get(0)?),
                F::I(r.try_get(1)?),
                F::I(r.try_get(2)?),
                F::S(&r.try_get::<String, _>(3)?),
                F::S(&r.try_get::<String, _>(4)?),
                F::I(r.try_get(5)?),
                F::S(&rate),
                opt(r.try_get(7)?),
                opt(r.try_get(8)?),
                F::I(r.try_get(9)?),
                F::S(&r.try_get::<String, _>(10)?),
            ],
        );
    }
    for r in sqlx::query(sql::ISSUANCE)
        .bind(batch_id)
        .fetch_all(&mut *conn)
        .await?
    {
        let fee = decimal_text(&r.try_get::<String, _>(2)?)?;
        b.row(
            b'I',
            &[
                F::I(r.try_get(0)?),
                F::S(&r.try_get::<String, _>(1)?),
                F::S(&fee),
                F::I(r.try_get(3)?),
                F::S(&r.try_get::<String, _>(4)?),
            ],
        );
    }
    Ok(b)
}
