-- Each member's activity, kept by the writer on its row (ledger::Activity) so that programme
-- reports read one row per member instead of its transactions: the latest month with a
-- transaction (year * 12 + month - 1, the month of the transaction's cycle), the months before it
-- as bits (bit k: month activity_month - k), and the instant of its second transaction.
-- Backfilled from the transactions (the same statements as store::report::BACKFILL).
ALTER TABLE members ADD COLUMN activity_month INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN activity_mask INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN second_at INTEGER;
UPDATE members SET activity_month = a.m FROM (SELECT member_id, MAX((CAST(substr(cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(cycle, 6, 2) AS BIGINT) - 1)) AS m FROM transactions GROUP BY member_id) a WHERE a.member_id = members.member_id;
UPDATE members SET activity_mask = a.mask FROM (SELECT t.member_id, CAST(SUM(DISTINCT CAST(1 AS BIGINT) << CAST(x.activity_month - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) AS INTEGER)) AS BIGINT) AS mask FROM transactions t JOIN members x ON x.member_id = t.member_id WHERE x.activity_month - (CAST(substr(t.cycle, 1, 4) AS BIGINT) * 12 + CAST(substr(t.cycle, 6, 2) AS BIGINT) - 1) <= 62 GROUP BY t.member_id) a WHERE a.member_id = members.member_id;
UPDATE members SET second_at = s.at FROM (SELECT member_id, accepted_at AS at FROM (SELECT member_id, accepted_at, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY accepted_at, id) AS n FROM transactions) r WHERE n = 2) s WHERE s.member_id = members.member_id;
