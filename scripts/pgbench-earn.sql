-- pgbench baseline for the daemon's PostgreSQL bench: the durable work of one earn without the
-- daemon: insert the transaction (unique on partner + partner's id) and update the member's
-- balance, in one transaction. Run by scripts/bench-postgres.
\set member random(1, 100000)
\set points random(10, 99)
\set txn random(1, 9000000000000000000)
BEGIN;
INSERT INTO baseline_transactions (partner_id, partner_txn_id, member_id, points, accepted_at)
  VALUES ('skyways', :txn, :member, :points, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
INSERT INTO baseline_balances (member_id, points) VALUES (:member, :points)
  ON CONFLICT (member_id) DO UPDATE SET points = baseline_balances.points + excluded.points;
END;
