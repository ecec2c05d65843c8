-- Breakage as facts: each sweep of each lot, and each earn reversal that takes swept points back,
-- is its own row in the cycle it happened in. A cycle's breakage is exactly what its facts say,
-- forever; `lots.expired` is their sum per lot (kept for the writer, checked by the audit).
CREATE TABLE breakage (
    id          INTEGER PRIMARY KEY,
    lot_id      INTEGER NOT NULL,
    member_id   TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    cycle       TEXT NOT NULL,
    -- positive: swept by the cycle's clearing run; negative: taken back by an earn reversal
    points      INTEGER NOT NULL CHECK (points <> 0),
    -- the earn reversal that undid swept points (NULL for a sweep)
    txn_id      INTEGER
);
CREATE INDEX breakage_cycle ON breakage (cycle);
CREATE INDEX breakage_lot ON breakage (lot_id);

-- What earlier sweeps booked, as well as it can be told: the last cycle that swept each lot.
INSERT INTO breakage (lot_id, member_id, issuer, cycle, points)
    SELECT id, member_id, issuer, expired_cycle, expired FROM lots
    WHERE expired > 0 AND expired_cycle IS NOT NULL;
ALTER TABLE lots DROP COLUMN expired_cycle;
