-- Each cycle's gross matrix: per issuer, redeemer and rate, the points and the number of
-- allocations, kept by the writer with every batch (as cycle_totals is), so that a clearing run
-- reads a few thousand cells instead of scanning millions of allocations. The rate is the text the
-- allocations store; the audit recomputes every cell from the allocations.
CREATE TABLE cycle_matrix (
    cycle       TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    redeemer    TEXT NOT NULL,
    rate        TEXT NOT NULL,
    points      INTEGER NOT NULL,
    allocations INTEGER NOT NULL,
    PRIMARY KEY (cycle, issuer, redeemer, rate)
) WITHOUT ROWID;

INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations)
SELECT cycle, issuer, redeemer, rate, SUM(points), COUNT(*) FROM allocations
GROUP BY cycle, issuer, redeemer, rate;
