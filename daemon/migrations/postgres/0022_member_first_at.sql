-- The instant of each member's first transaction, kept beside the second's (ledger::Activity):
-- with both kept as the two earliest instants, the row is the same whichever of two daemons'
-- batches commits first. Backfilled as store::report::BACKFILL[3] does.
ALTER TABLE members ADD COLUMN first_at BIGINT;
UPDATE members SET first_at = s.at FROM (SELECT member_id, MIN(accepted_at) AS at FROM transactions GROUP BY member_id) s WHERE s.member_id = members.member_id;
