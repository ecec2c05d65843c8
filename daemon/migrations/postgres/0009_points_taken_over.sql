-- A retired partner whose points the operator took over as issuer: from this instant, points of
-- its lots that are redeemed are owed by the operator (allocations name the operator as issuer);
-- the lots keep their original issuer of record.
ALTER TABLE partners ADD COLUMN points_taken_over_at BIGINT;
