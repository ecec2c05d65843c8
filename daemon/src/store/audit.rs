//! The ledger invariants as SQL, shared by every backend. The tests run the audit after every
//! scenario; `coalitiond audit` runs it against a database.

use crate::ledger::Micros;
use std::fmt;

/// Checks that count violations; each must return 0. The SQL is plain enough for SQLite and
/// PostgreSQL alike.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "each partner's feed has every event from its oldest kept to its head, one per sequence, and its head is its last event",
        "SELECT (SELECT COUNT(*) FROM (SELECT e.partner_id FROM partner_events e GROUP BY e.partner_id \
         HAVING COUNT(*) <> MAX(e.seq) - MIN(e.seq) + 1 \
         OR MAX(e.seq) <> (SELECT h.last_seq FROM partner_event_heads h WHERE h.partner_id = e.partner_id)) x) \
         + (SELECT COUNT(*) FROM partner_events e JOIN partner_event_heads h ON h.partner_id = e.partner_id \
         WHERE e.seq > h.last_seq)",
    ),
    (
        "every kept event of a transaction names one of its partner's transactions, of its kind",
        "SELECT COUNT(*) FROM partner_events e WHERE e.event_type IN \
         ('transaction.earned', 'transaction.burned', 'transaction.earn_reversed', 'transaction.burn_reversed') \
         AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.partner_id = e.partner_id \
         AND t.member_id = e.member_id AND t.kind = CASE e.event_type WHEN 'transaction.earned' THEN 'earn' \
         WHEN 'transaction.burned' THEN 'burn' WHEN 'transaction.earn_reversed' THEN 'reverse_earn' \
         ELSE 'reverse_burn' END AND t.accepted_at = e.at)",
    ),
    (
        "lot points_left = points - reversed - expired - its allocations - what holds hold of it",
        "SELECT COUNT(*) FROM lots l LEFT JOIN (SELECT lot_id, SUM(points) AS s FROM allocations GROUP BY lot_id) a \
         ON a.lot_id = l.id LEFT JOIN (SELECT lot_id, SUM(points) AS s FROM hold_slices GROUP BY lot_id) h \
         ON h.lot_id = l.id WHERE l.points_left <> l.points - l.reversed - l.expired - COALESCE(a.s, 0) - COALESCE(h.s, 0)",
    ),
    (
        "each member's points left in lots + held + swept breakage - debt = what its transactions moved",
        "SELECT COUNT(*) FROM \
         (SELECT member_id, SUM(CASE kind WHEN 'earn' THEN points WHEN 'reverse_burn' THEN points ELSE -points END) AS flow \
          FROM transactions GROUP BY member_id) t \
         LEFT JOIN (SELECT member_id, SUM(points_left + expired) AS s FROM lots GROUP BY member_id) l ON l.member_id = t.member_id \
         LEFT JOIN (SELECT member_id, SUM(points_left) AS s FROM debts GROUP BY member_id) d ON d.member_id = t.member_id \
         LEFT JOIN (SELECT h.member_id, SUM(s.points) AS s FROM hold_slices s JOIN holds h ON h.id = s.hold_id \
          GROUP BY h.member_id) hd ON hd.member_id = t.member_id \
         WHERE t.flow <> COALESCE(l.s, 0) + COALESCE(hd.s, 0) - COALESCE(d.s, 0)",
    ),
    (
        "each member's kept open points = the points left in its lots",
        "SELECT COUNT(*) FROM members m LEFT JOIN (SELECT member_id, SUM(points_left) AS s FROM lots \
         WHERE points_left > 0 GROUP BY member_id) l ON l.member_id = m.member_id \
         WHERE m.open_points <> COALESCE(l.s, 0)",
    ),
    (
        "no lot gives more than it has (points_left >= 0), so no hold holds more than the member had",
        "SELECT COUNT(*) FROM lots WHERE points_left < 0",
    ),
    (
        "every hold is in exactly one state: held with slices summing to its points from lots of its member; captured by one burn of its partner and member of the captured points; voided or expired with nothing held or captured",
        "SELECT COUNT(*) FROM holds h \
         LEFT JOIN (SELECT s.hold_id, SUM(s.points) AS s, \
           SUM(CASE WHEN l.id IS NULL OR l.member_id <> x.member_id THEN 1 ELSE 0 END) AS bad \
           FROM hold_slices s JOIN holds x ON x.id = s.hold_id LEFT JOIN lots l ON l.id = s.lot_id \
           GROUP BY s.hold_id) hs ON hs.hold_id = h.id \
         LEFT JOIN transactions t ON t.id = h.capture_id \
         WHERE NOT ( \
           (h.state = 'held' AND hs.s = h.points AND hs.bad = 0 AND h.captured = 0 AND h.capture_id IS NULL AND h.closed_by IS NULL) \
           OR (h.state = 'captured' AND hs.s IS NULL AND h.captured >= 1 AND t.kind = 'burn' AND t.points = h.captured \
               AND t.partner_id = h.partner_id AND t.member_id = h.member_id AND t.partner_txn_id = h.closed_by) \
           OR (h.state = 'voided' AND hs.s IS NULL AND h.captured = 0 AND h.capture_id IS NULL AND h.closed_by IS NOT NULL) \
           OR (h.state = 'expired' AND hs.s IS NULL AND h.captured = 0 AND h.capture_id IS NULL AND h.closed_by IS NULL))",
    ),
    (
        "every lot is a lot of an earn of the same member (the partner's with the earn's id, the operator's with its negation), and an earn's lots hold its points",
        "SELECT (SELECT COUNT(*) FROM lots l LEFT JOIN transactions t ON t.id = ABS(l.id) \
         WHERE t.id IS NULL OR t.kind <> 'earn' OR t.member_id <> l.member_id \
         OR (l.id > 0 AND t.partner_id <> l.issuer) OR (l.id < 0 AND l.issuer <> 'operator')) \
         + (SELECT COUNT(*) FROM transactions t LEFT JOIN (SELECT ABS(id) AS e, SUM(points) AS s FROM lots GROUP BY ABS(id)) l \
         ON l.e = t.id WHERE t.kind = 'earn' AND COALESCE(l.s, 0) <> t.points)",
    ),
    (
        "every lot and debt belongs to a known member",
        "SELECT (SELECT COUNT(*) FROM lots x WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = x.member_id)) \
         + (SELECT COUNT(*) FROM debts x WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.member_id = x.member_id))",
    ),
    (
        "every allocation points at a real lot of its issuer (or of the operator once it took the issuer's points over) and member, and a real transaction",
        "SELECT COUNT(*) FROM allocations a LEFT JOIN lots l ON l.id = a.lot_id LEFT JOIN transactions t ON t.id = a.txn_id \
         WHERE l.id IS NULL OR t.id IS NULL OR l.member_id <> a.member_id OR (l.issuer <> a.issuer AND NOT ( \
         a.issuer = 'operator' AND EXISTS (SELECT 1 FROM partners p WHERE p.partner_id = l.issuer \
         AND p.points_taken_over_at IS NOT NULL AND a.accepted_at >= p.points_taken_over_at)))",
    ),
    (
        "every reversing allocation undoes a real allocation of the same lot",
        "SELECT COUNT(*) FROM allocations a LEFT JOIN allocations o ON o.txn_id = a.reverses_txn AND o.seq = a.reverses_seq \
         WHERE a.reverses_txn IS NOT NULL AND (o.txn_id IS NULL OR o.lot_id <> a.lot_id OR a.points >= 0 OR o.rate <> a.rate)",
    ),
    (
        "a burn's allocations sum to its points, a burn reversal's to minus its points",
        "SELECT COUNT(*) FROM transactions t LEFT JOIN (SELECT txn_id, SUM(points) AS s FROM allocations GROUP BY txn_id) a \
         ON a.txn_id = t.id WHERE (t.kind = 'burn' AND COALESCE(a.s, 0) <> t.points) \
         OR (t.kind = 'reverse_burn' AND COALESCE(a.s, 0) <> -t.points)",
    ),
    (
        "reversed_points of an earn or burn = the points of its reversals",
        "SELECT COUNT(*) FROM transactions t LEFT JOIN \
         (SELECT original_id, SUM(points) AS s FROM transactions WHERE original_id IS NOT NULL GROUP BY original_id) r \
         ON r.original_id = t.id WHERE t.kind IN ('earn', 'burn') AND t.reversed_points <> COALESCE(r.s, 0)",
    ),
    (
        "cycle totals = the counts and points of the cycle's transactions",
        "SELECT (SELECT COUNT(*) FROM (SELECT cycle, partner_id, kind, COUNT(*) AS n, SUM(points) AS p FROM transactions \
         GROUP BY cycle, partner_id, kind) t LEFT JOIN cycle_totals c ON c.cycle = t.cycle AND c.partner_id = t.partner_id \
         AND c.kind = t.kind WHERE c.kind IS NULL OR c.transactions <> t.n OR c.points <> t.p) \
         + (SELECT COUNT(*) FROM cycle_totals c WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.cycle = c.cycle \
         AND t.partner_id = c.partner_id AND t.kind = c.kind))",
    ),
    (
        "each cycle's gross matrix = its allocations summed per issuer, redeemer and rate",
        super::matrix::MATRIX_CHECK,
    ),
    (
        "each member's kept activity (months with a transaction, its first and second transactions) = its \
         transactions",
        "SELECT COUNT(*) FROM members m LEFT JOIN (SELECT member_id, MAX((CAST(substr(cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(cycle, 6, 2) AS BIGINT) - 1)) AS mm FROM transactions GROUP BY member_id) a ON a.member_id = m.member_id LEFT JOIN (SELECT t.member_id, CAST(SUM(DISTINCT CAST(1 AS BIGINT) << CAST(y.mm - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) AS INTEGER)) AS BIGINT) AS mask FROM transactions t JOIN (SELECT member_id, MAX((CAST(substr(cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(cycle, 6, 2) AS BIGINT) - 1)) AS mm FROM transactions GROUP BY member_id) y ON y.member_id = t.member_id WHERE y.mm - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) <= 62 GROUP BY t.member_id) b ON b.member_id = m.member_id LEFT JOIN (SELECT member_id, accepted_at FROM (SELECT member_id, accepted_at, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY accepted_at, id) AS n FROM transactions) r WHERE n = 2) s ON s.member_id = m.member_id LEFT JOIN (SELECT member_id, MIN(accepted_at) AS at FROM transactions GROUP BY member_id) f ON f.member_id = m.member_id WHERE m.activity_month <> COALESCE(a.mm, 0) OR m.activity_mask <> COALESCE(b.mask, 0) OR COALESCE(m.second_at, -1) <> COALESCE(s.accepted_at, -1) OR COALESCE(m.first_at, -1) <> COALESCE(f.at, -1)",
    ),
    (
        "every partner's answer to a settlement names a final settlement, its digest, and came \
         after it was finalized",
        "SELECT COUNT(*) FROM settlement_responses r LEFT JOIN settlements s ON s.cycle = r.cycle \
         WHERE s.cycle IS NULL OR s.status <> 'final' OR s.digest <> r.digest \
         OR s.finalized_at IS NULL OR r.answered_at < s.finalized_at",
    ),
    (
        "a settlement finalized while reconciliation breaks of its cycle were open carries \
         finance's acceptance of them",
        "SELECT COUNT(*) FROM settlements s WHERE s.status = 'final' AND s.accepted_breaks IS NULL \
         AND EXISTS (SELECT 1 FROM reconciliation_breaks b JOIN reconciliations r \
         ON r.cycle = b.cycle AND r.partner_id = b.partner_id WHERE b.cycle = s.cycle \
         AND r.submitted_at < s.finalized_at AND (b.resolved_at IS NULL OR b.resolved_at > s.finalized_at))",
    ),
    (
        "a forgotten member has no lot or hold that runs past its forget, and no earn, burn or \
         hold after it",
        "SELECT (SELECT COUNT(*) FROM lots l JOIN forgotten_members f ON f.pseudonym = l.member_id \
         WHERE l.expires_at IS NULL OR l.expires_at > f.forgotten_at) \
         + (SELECT COUNT(*) FROM holds h JOIN forgotten_members f ON f.pseudonym = h.member_id \
         WHERE h.state = 'held' AND h.expires_at > f.forgotten_at) \
         + (SELECT COUNT(*) FROM transactions t JOIN forgotten_members f ON f.pseudonym = t.member_id \
         WHERE t.kind IN ('earn', 'burn') AND t.accepted_at > f.forgotten_at)",
    ),
    (
        "each lot's expired points = the sum of its breakage facts",
        "SELECT COUNT(*) FROM lots l LEFT JOIN (SELECT lot_id, SUM(points) AS s FROM breakage GROUP BY lot_id) b \
         ON b.lot_id = l.id WHERE l.expired <> COALESCE(b.s, 0)",
    ),
    (
        "every breakage fact names a real lot of its member and issuer; undoing facts name an earn reversal of it",
        "SELECT COUNT(*) FROM breakage b LEFT JOIN lots l ON l.id = b.lot_id LEFT JOIN transactions t ON t.id = b.txn_id \
         WHERE l.id IS NULL OR l.member_id <> b.member_id OR l.issuer <> b.issuer \
         OR (b.txn_id IS NULL AND b.points < 0) \
         OR (b.txn_id IS NOT NULL AND (t.id IS NULL OR t.kind <> 'reverse_earn' OR t.original_id <> ABS(b.lot_id) OR b.points > 0))",
    ),
    (
        "each consent is the last change recorded for its member, purpose and scope",
        "SELECT (SELECT COUNT(*) FROM consents c WHERE NOT EXISTS (SELECT 1 FROM consent_events e \
         WHERE e.member_id = c.member_id AND e.purpose = c.purpose AND e.scope = c.scope \
         AND e.granted = c.granted AND e.at = c.captured_at AND e.actor = c.captured_by \
         AND NOT EXISTS (SELECT 1 FROM consent_events l WHERE l.member_id = e.member_id \
         AND l.purpose = e.purpose AND l.scope = e.scope AND l.at > e.at))) \
         + (SELECT COUNT(*) FROM (SELECT DISTINCT member_id, purpose, scope FROM consent_events) k \
         WHERE NOT EXISTS (SELECT 1 FROM consents c WHERE c.member_id = k.member_id \
         AND c.purpose = k.purpose AND c.scope = k.scope))",
    ),
    (
        "every reversal points at a transaction of the kind it reverses",
        "SELECT COUNT(*) FROM transactions t LEFT JOIN transactions o ON o.id = t.original_id \
         WHERE t.kind IN ('reverse_earn', 'reverse_burn') AND (o.id IS NULL OR o.member_id <> t.member_id \
         OR (t.kind = 'reverse_earn' AND o.kind <> 'earn') OR (t.kind = 'reverse_burn' AND o.kind <> 'burn'))",
    ),
];

/// Points moved by each kind of transaction: `SELECT kind, total`.
pub const TOTALS_BY_KIND: &str =
    "SELECT kind, CAST(SUM(points) AS BIGINT) AS total FROM transactions GROUP BY kind";
/// Points left in lots still counting at $1.
pub const LIVE_POINTS: &str = "SELECT CAST(COALESCE(SUM(points_left), 0) AS BIGINT) FROM lots WHERE expires_at IS NULL OR expires_at > $1";
/// Points expired at $1: swept as breakage, or left in lots past their expiry and not yet swept.
pub const EXPIRED_POINTS: &str = "SELECT CAST(COALESCE(SUM(expired), 0) + COALESCE(SUM(CASE WHEN expires_at IS NOT NULL \
    AND expires_at <= $1 THEN points_left ELSE 0 END), 0) AS BIGINT) FROM lots";
/// Points held by holds at the till (out of their lots until captured or released).
pub const HELD_POINTS: &str = "SELECT CAST(COALESCE(SUM(points), 0) AS BIGINT) FROM hold_slices";
/// Points owed.
pub const DEBT: &str = "SELECT CAST(COALESCE(SUM(points_left), 0) AS BIGINT) FROM debts";
/// Row counts, for the report.
pub const COUNTS: &str = "SELECT (SELECT COUNT(*) FROM members), (SELECT COUNT(*) FROM transactions), \
    (SELECT COUNT(*) FROM lots), (SELECT COUNT(*) FROM allocations)";

/// The result of an audit.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// When the audit looked (expiry is judged at this instant).
    pub at: Micros,
    /// Members.
    pub members: i64,
    /// Transactions.
    pub transactions: i64,
    /// Lots.
    pub lots: i64,
    /// Allocations.
    pub allocations: i64,
    /// Settlements recomputed from the ledger.
    pub settlements: i64,
    /// Points earned.
    pub earned: i64,
    /// Points burned.
    pub burned: i64,
    /// Points given back by burn reversals.
    pub burns_reversed: i64,
    /// Points taken back by earn reversals.
    pub earns_reversed: i64,
    /// Points left in lots past expiry.
    pub expired: i64,
    /// Σ balances: points left in unexpired lots minus debt.
    pub balances: i64,
    /// Points held by holds (in no lot's points left).
    pub held: i64,
    /// Points owed.
    pub debt: i64,
    /// Links of the ledger's hash chain recomputed from their rows (`store::chain`).
    pub chain_links: i64,
    /// Transactions written before the chain existed (not covered by it).
    pub before_chain: i64,
    /// What does not hold, in words.
    pub violations: Vec<String>,
}

impl Report {
    /// Adds the totals check and returns the finished report.
    pub fn finish(mut self) -> Report {
        let lhs =
            self.earned - self.burned + self.burns_reversed - self.earns_reversed - self.expired;
        if lhs != self.balances + self.held {
            self.violations.push(format!(
                "earned {} - burned {} + burns reversed {} - earns reversed {} - expired {} = {} but balances sum to {} and holds hold {}",
                self.earned, self.burned, self.burns_reversed, self.earns_reversed, self.expired, lhs, self.balances, self.held
            ));
        }
        self
    }

    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "members {}  transactions {}  lots {}  allocations {}  settlements recomputed {}  chain links recomputed {}{}",
            self.members,
            self.transactions,
            self.lots,
            self.allocations,
            self.settlements,
            self.chain_links,
            if self.before_chain > 0 {
                format!(" ({} transactions predate the chain)", self.before_chain)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "earned {}  burned {}  burns reversed {}  earns reversed {}  expired {}  debt {}  balances {}  held {}",
            self.earned,
            self.burned,
            self.burns_reversed,
            self.earns_reversed,
            self.expired,
            self.debt,
            self.balances,
            self.held
        )?;
        if self.ok() {
            write!(f, "all invariants hold")
        } else {
            for v in &self.violations {
                writeln!(f, "VIOLATED: {v}")?;
            }
            Ok(())
        }
    }
}

/// Runs every check on `conn` (inside the caller's read transaction, so that all figures come from
/// one snapshot). Generic over the backend: the SQL is the same on both.
pub async fn run<DB>(conn: &mut DB::Connection, now: Micros) -> Result<Report, sqlx::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB> + for<'q> sqlx::Encode<'q, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    use sqlx::Row;
    let mut r = Report {
        at: now,
        ..Default::default()
    };
    for (name, sql) in CHECKS.iter().chain(super::registry::CHECKS) {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *conn).await?;
        if n != 0 {
            r.violations.push(format!("{name}: {n} violations"));
        }
    }
    r.violations
        .extend(super::programme::verify::<DB>(&mut *conn).await?);
    for row in sqlx::query(TOTALS_BY_KIND).fetch_all(&mut *conn).await? {
        let kind: String = row.try_get(0)?;
        let total: i64 = row.try_get(1)?;
        match crate::ledger::Kind::parse(&kind) {
            Some(crate::ledger::Kind::Earn) => r.earned = total,
            Some(crate::ledger::Kind::Burn) => r.burned = total,
            Some(crate::ledger::Kind::ReverseEarn) => r.earns_reversed = total,
            Some(crate::ledger::Kind::ReverseBurn) => r.burns_reversed = total,
            None => r
                .violations
                .push(format!("unknown transaction kind {kind}")),
        }
    }
    let live: i64 = sqlx::query_scalar(LIVE_POINTS)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    r.expired = sqlx::query_scalar(EXPIRED_POINTS)
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    r.debt = sqlx::query_scalar(DEBT).fetch_one(&mut *conn).await?;
    r.held = sqlx::query_scalar(HELD_POINTS)
        .fetch_one(&mut *conn)
        .await?;
    r.balances = live - r.debt;
    let row = sqlx::query(COUNTS).fetch_one(&mut *conn).await?;
    (r.members, r.transactions, r.lots, r.allocations) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    Ok(r.finish())
}
