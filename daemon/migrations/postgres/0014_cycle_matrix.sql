-- Each cycle's gross matrix: per issuer, redeemer and rate, the points and the number of
-- allocations, kept by the writer with every batch (as cycle_totals is), so that a clearing run
-- reads a few thousand cells instead of scanning millions of allocations. The rate is kept as the
-- text of the allocations' rate (scale included); the audit recomputes every cell from them.
CREATE TABLE cycle_matrix (
    cycle       TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    redeemer    TEXT NOT NULL,
    rate        TEXT NOT NULL,
    points      BIGINT NOT NULL,
    allocations BIGINT NOT NULL,
    PRIMARY KEY (cycle, issuer, redeemer, rate)
);

INSERT INTO cycle_matrix (cycle, issuer, redeemer, rate, points, allocations)
SELECT cycle, issuer, redeemer, rate::text, SUM(points), COUNT(*) FROM allocations
GROUP BY cycle, issuer, redeemer, rate::text;
